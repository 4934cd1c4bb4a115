"""gguf's GGUFWriter, with the vocabulary's long arrays packed in one pass.

A 150k-token vocabulary is four arrays of ~150k items (tokens, types, merges, scores). GGUFWriter packs each item
through a recursive `_pack_val` with its own `struct.pack` call, a large share of an export's time, paid twice
(the probe vocabulary and the real file; measurements: benchmarks/RESULTS.md). Here homogeneous lists of
strings, Python ints (INT32) and Python floats (FLOAT32) are packed at once; anything else goes to GGUFWriter
unchanged. The bytes are the same (tests/test_export_tokenizers.py compares them with GGUFWriter's own).
"""

from __future__ import annotations

import struct
from typing import Any

import gguf
import numpy as np

_LENGTH = struct.Struct("<Q")
_NUMPY = {gguf.GGUFValueType.INT32: "<i4", gguf.GGUFValueType.FLOAT32: "<f4"}
_PYTHON = {gguf.GGUFValueType.INT32: int, gguf.GGUFValueType.FLOAT32: float}


class GGUFWriter(gguf.GGUFWriter):
    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                  sub_type: gguf.GGUFValueType | None = None) -> bytes:
        packed = self._pack_array(val, sub_type) if (vtype == gguf.GGUFValueType.ARRAY and isinstance(val, list)
                                                     and val and self.endianess == gguf.GGUFEndian.LITTLE) else None
        if packed is None:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        return (struct.pack("<I", vtype) if add_vtype else b"") + packed

    @staticmethod
    def _pack_array(val: list, sub_type: gguf.GGUFValueType | None) -> bytes | None:
        """Item type, count and items, as GGUFWriter writes them; None where the fast path does not apply (mixed
        types, nested arrays, other item types: GGUFWriter then packs or refuses them itself)."""
        kind = sub_type if sub_type is not None else gguf.GGUFValueType.get_type(val[0])
        head = struct.pack("<IQ", kind, len(val))
        if kind == gguf.GGUFValueType.STRING:  # one growing buffer: no per-item objects (benchmarks/RESULTS.md)
            out = bytearray(head)
            for v in val:
                if isinstance(v, str):
                    v = v.encode("utf-8")
                elif not isinstance(v, (bytes, bytearray)):
                    return None
                out += _LENGTH.pack(len(v))
                out += v
            return bytes(out)
        python = _PYTHON.get(kind)
        if python is None or not all(type(v) is python for v in val):  # bool is an int, but not an INT32 here
            return None
        if python is int and not all(-2**31 <= v < 2**31 for v in val):
            return None  # out of range: struct.pack raises on it in GGUFWriter, so let it
        return head + np.asarray(val, dtype=_NUMPY[kind]).tobytes()
