"""Human-readable sizes (no heavy imports: the recipe schema uses this)."""

import re

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'2GB', '500MB', '1.5GiB', '123' (bytes) -> bytes."""
    match = _SIZE.match(str(text).strip())
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").upper()] if match else 0
    if value < 1:
        raise ValueError(f"{text!r} is not a size; use e.g. 500MB, 2GB or 1GiB")
    return int(value)
