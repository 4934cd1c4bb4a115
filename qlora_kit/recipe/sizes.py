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


# GPU makers write "24 GB" for 24 GiB (an RTX 4090 has 24 GiB) and nvidia-smi writes "24564MiB": so for a GPU's
# memory a bare number and every spelling of a unit (G, GB, GiB; M, MB, MiB; T, TB, TiB) are binary.
_GPU_UNITS = {"M": 2**20, "G": 2**30, "T": 2**40}
_GPU_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([MGT])(?:I?B)?)?$", re.IGNORECASE)


def parse_gpu_memory(text: str) -> int:
    """'24', '24G', '24GB', '24GiB' -> 24 GiB in bytes; '24564MiB' -> MiB. Under 1 GiB is refused: a slip, not a GPU."""
    match = _GPU_SIZE.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a size; use e.g. 24 or 24GiB (a bare number is GiB; G, GB and GiB all "
                         "mean GiB, M/MB/MiB MiB)")
    value = int(float(match.group(1)) * _GPU_UNITS[(match.group(2) or "G").upper()])
    if value < 2**30:
        raise ValueError(f"{text!r} is under 1 GiB, too little for a GPU; give its memory in GiB, e.g. 24 or 24GiB")
    return value
