"""Read GGUF metadata keys fast: the vocabulary checks read a few keys of files whose token arrays hold up to 262k
strings. gguf's GGUFReader builds a numpy view for every array element (about 10 s per 256k-token file here, three
minutes for llama.cpp's 19 vocabulary files); this walks the key/value section once with struct, skipping what is not
asked for, and reads numeric arrays with one numpy call.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from qlora_kit.errors import UsageError

# GGUF value types: (struct format, size) for the fixed-size ones; 8 is a string, 9 an array.
FIXED = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
         7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
         12: "<f8"}
STRING, ARRAY = 8, 9


def read_keys(path: Path, keys: set[str] | None = None) -> dict:
    """{key: value} for the asked keys present in the file (all keys when `keys` is None). Strings are str
    (invalid UTF-8 replaced), numeric arrays lists, string arrays lists of str."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _walk(buf, keys)
        except (struct.error, IndexError, ValueError) as exc:
            raise UsageError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None


def _walk(buf, keys: set[str] | None) -> dict:
    if buf[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    version, _tensors, count = struct.unpack_from("<IQQ", buf, 4)
    if version < 2:
        raise ValueError(f"GGUF version {version} (only 2 and 3 are read)")
    pos, found = 24, {}
    for _ in range(count):
        key, pos = _string(buf, pos)
        (kind,), pos = struct.unpack_from("<I", buf, pos), pos + 4
        wanted = keys is None or key in keys
        value, pos = _value(buf, pos, kind, wanted)
        if wanted:
            found[key] = value
            if keys is not None and len(found) == len(keys):
                break
    return found


def copy_keys(src: Path, dst: Path, keep) -> int:
    """Write a GGUF without tensors holding src's key/value pairs whose key `keep(key)` accepts, byte for byte (so
    every value keeps its exact GGUF type). Reads only the key/value section: src may be the first part of a file
    split into chunks. Returns the number of keys copied."""
    with open(src, "rb") as fh:
        buf = fh.read()
    version, _tensors, count = struct.unpack_from("<IQQ", buf, 4)
    pos, kept = 24, []
    for _ in range(count):
        start = pos
        key, pos = _string(buf, pos)
        (kind,), pos = struct.unpack_from("<I", buf, pos), pos + 4
        _, pos = _value(buf, pos, kind, False)
        if keep(key):
            kept.append(buf[start:pos])
    body = b"GGUF" + struct.pack("<IQQ", version, 0, len(kept)) + b"".join(kept)
    dst.write_bytes(body + b"\0" * (-len(body) % 32))  # the (empty) data section starts aligned
    return len(kept)


def _string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", "replace"), pos + 8 + n


def _value(buf, pos: int, kind: int, wanted: bool):
    if kind in FIXED:
        fmt, size = FIXED[kind]
        return (struct.unpack_from(fmt, buf, pos)[0] if wanted else None), pos + size
    if kind == STRING:
        return _string(buf, pos)
    if kind != ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, n = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if item in FIXED:
        import numpy as np

        size = FIXED[item][1] * n
        values = np.frombuffer(buf, dtype=NUMPY[item], count=n, offset=pos).tolist() if wanted else None
        return values, pos + size
    if item == STRING:
        out = [] if wanted else None
        for _ in range(n):
            (length,) = struct.unpack_from("<Q", buf, pos)
            if wanted:
                out.append(bytes(buf[pos + 8:pos + 8 + length]).decode("utf-8", "replace"))
            pos += 8 + length
        return out, pos
    values = []
    for _ in range(n):  # arrays of arrays: rare, read one by one
        value, pos = _value(buf, pos, item, wanted)
        values.append(value)
    return (values if wanted else None), pos
