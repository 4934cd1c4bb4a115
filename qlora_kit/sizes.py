"""Human-readable sizes (no heavy imports: the recipe schema uses this)."""


def parse_size(text: str) -> int:
    """'2GB', '500MB', '1.5GiB', '123' (bytes) -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = text.strip().upper().replace(" ", "")
    number = s.rstrip("KMGTIB")
    unit = s[len(number):]
    if unit not in units or not number:
        raise ValueError(f"{text!r} is not a size; use e.g. 500MB, 2GB or 1GiB")
    value = float(number) * units[unit]
    if value <= 0:
        raise ValueError(f"{text!r} must be positive")
    return int(value)
