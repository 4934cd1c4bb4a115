"""Read a base checkpoint tensor by tensor (never the whole model at once).

Tensors are read with positioned reads into their own buffers rather than through safetensors' memory map: a
mapped file keeps every page it has touched resident in the process (it counts toward RSS and the OOM killer's
view) until the map is closed, so reading a whole model through one map costs the whole model in RSS.

Also reads bitsandbytes pre-quantized 4-bit checkpoints (e.g. '...-bnb-4bit' repos): each quantized weight is
stored packed beside its quant state ('.absmax', '.quant_map', '.nested_*', '.quant_state.bitsandbytes__nf4');
`get` returns it dequantized and the auxiliary tensors are hidden from `names()`.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from qlora_kit.errors import UsageError

QUANT_AUX = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4",
             ".quant_state.bitsandbytes__fp4")
ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}


def nf4_roundtrip(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight exactly as a 4-bit NF4 (double-quant, blocksize 64) model loaded in `dtype` holds it.

    transformers casts the checkpoint tensor to the load dtype and quantizes it with these settings; quantizing
    the same tensor the same way is deterministic, so this is bit-identical to what training ran against
    (checked by tests/test_merge.py).
    """
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    packed, state = quantize_4bit(weight.to(dtype), blocksize=64, compress_statistics=True, quant_type="nf4",
                                  quant_storage=torch.uint8)
    return dequantize_4bit(packed, state)


def row_blocks(rows: int, row_elems: int, block_bytes: int, unit: int = 1):
    """(start, stop) ranges covering `rows`, each about `block_bytes` of float32 and a whole number of `unit`s
    (a tensor is processed a block of rows at a time: memory is a block, never the whole tensor)."""
    per = max(unit, (block_bytes // (4 * max(row_elems, 1))) // unit * unit)
    for start in range(0, rows, per):
        yield start, min(rows, start + per)


def nf4_roundtrip_blocks(read_rows, shape: tuple[int, ...], dtype: torch.dtype, blocks: list[tuple[int, int]]):
    """`nf4_roundtrip` of a whole tensor, computed a block of rows at a time, bit for bit.

    Each 64-value NF4 block is quantized on its own, but double quantization subtracts the mean of *all* the
    blocks' absmax values before quantizing them in turn: pass 1 computes every absmax (1/64 of the elements),
    then the nested quantization exactly as bitsandbytes does it; pass 2 quantizes each row block again and
    dequantizes it with its slice of the double-quantized absmax. Rows must be whole 64-value blocks (every
    supported architecture's layers are 64-multiples wide; merge falls back to the whole tensor otherwise: with
    other widths bitsandbytes' CPU kernel gives other values for a block of rows than for the same rows in place).
    """
    import bitsandbytes.functional as F

    ops = torch.ops.bitsandbytes
    row = 1
    for d in shape[1:]:
        row *= d
    absmax = torch.cat([ops.quantize_4bit.default(read_rows(a, b).to(dtype), 64, "nf4", torch.uint8)[1]
                        for a, b in blocks])
    offset = absmax.mean()
    quantized, state2 = F.quantize_blockwise(absmax - offset, blocksize=256)
    del absmax
    scales = F.dequantize_blockwise(quantized, state2)
    scales += offset
    scales = scales.float()
    for a, b in blocks:
        packed, _ = ops.quantize_4bit.default(read_rows(a, b).to(dtype), 64, "nf4", torch.uint8)
        yield ops.dequantize_4bit.default(packed, scales[a * row // 64:b * row // 64], 64, "nf4",
                                          (b - a, *shape[1:]), dtype)


class Checkpoint:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise UsageError(f"{self.path}: no config.json; not a Hugging Face model directory")
        self.config = json.loads(config_file.read_text())
        self.files = self._files()
        self._where: dict[str, Path] = {}
        self._entry: dict[str, dict] = {}  # name -> {dtype, shape, start, end} (absolute byte offsets)
        self._order: list[str] = []
        for file in self.files:
            for name, entry in read_header(file).items():
                self._where[name] = file
                self._entry[name] = entry
                self._order.append(name)
        qc = self.config.get("quantization_config") or {}
        self.prequantized = qc.get("quant_method") == "bitsandbytes" and bool(qc.get("load_in_4bit"))
        if qc and not self.prequantized:
            raise UsageError(f"{self.path}: quantized with {qc.get('quant_method')!r} "
                             f"({'8-bit' if qc.get('load_in_8bit') else 'unknown format'}); only 16/32-bit and "
                             "bitsandbytes 4-bit checkpoints can be merged")

    def _files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [self.path / f for f in dict.fromkeys(weight_map.values())]
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            found = ", ".join(sorted(p.name for p in self.path.iterdir())[:8])
            raise UsageError(f"{self.path}: no .safetensors weights (found: {found}); qlora-kit reads safetensors "
                             "only")
        return files

    def names(self) -> list[str]:
        return [n for n in self._order if not n.endswith(QUANT_AUX)]

    def __contains__(self, name: str) -> bool:
        return name in self._where and not name.endswith(QUANT_AUX)

    def is_quantized(self, name: str) -> bool:
        return self.prequantized and any(f"{name}{s}" in self._where for s in (".absmax", ".quant_map"))

    def shape(self, name: str) -> tuple[int, ...]:
        if self.is_quantized(name):
            return tuple(self._quant_state(name).shape)
        return tuple(self._entry[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        if self.is_quantized(name):
            return self._quant_state(name).dtype
        return ST_DTYPES[self._entry[name]["dtype"]]

    def _read(self, name: str) -> torch.Tensor:
        entry = self._entry[name]
        dtype, shape = ST_DTYPES[entry["dtype"]], entry["shape"]
        size = entry["end"] - entry["start"]
        if size == 0:
            return torch.empty(shape, dtype=dtype)
        buf = bytearray(size)
        with open(self._where[name], "rb") as fh:
            fh.seek(entry["start"])
            if fh.readinto(buf) != size:
                raise UsageError(f"{self._where[name]}: truncated file (tensor {name})")
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a stored (not 4-bit packed) tensor, with one positioned read: a row block of a
        large matrix costs its own bytes, never the whole tensor's (1-D tensors: elements)."""
        entry = self._entry[name]
        dtype, shape = ST_DTYPES[entry["dtype"]], entry["shape"]
        row_bytes = (entry["end"] - entry["start"]) // max(shape[0], 1) if shape else 0
        if not shape or self.is_quantized(name) or not 0 <= start <= stop <= shape[0]:
            raise ValueError(f"{name}: cannot read rows {start}:{stop} of {shape}")
        buf = bytearray((stop - start) * row_bytes)
        if buf:
            with open(self._where[name], "rb", buffering=0) as fh:
                if _pread_into(fh.fileno(), memoryview(buf), entry["start"] + start * row_bytes) != len(buf):
                    raise UsageError(f"{self._where[name]}: truncated file (tensor {name})")
        return torch.frombuffer(buf, dtype=dtype).reshape(stop - start, *shape[1:]) if buf \
            else torch.empty((0, *shape[1:]), dtype=dtype)

    def get(self, name: str) -> torch.Tensor:
        packed = self._read(name)
        if not self.is_quantized(name):
            return packed
        from bitsandbytes.functional import dequantize_4bit

        return dequantize_4bit(packed, self._quant_state(name))

    def _quant_state(self, name: str):
        from bitsandbytes.functional import QuantState

        parts = {}
        for key in self._where:
            if key.startswith(name + ".") and key.endswith(QUANT_AUX):
                parts[key[len(name) + 1:]] = self._read(key)
        return QuantState.from_dict(parts, device=torch.device("cpu"))


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill `view` from `offset` (a single pread returns at most ~2 GiB on Linux); returns the bytes read."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            break
        done += n
    return done


def read_header(file: Path) -> dict[str, dict]:
    """A safetensors header: name -> dtype, shape and absolute byte range, in file order."""
    with open(file, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise UsageError(f"{file}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{file}: not a safetensors file (unreadable header)") from None
    base = 8 + length
    return {name: {"dtype": e["dtype"], "shape": e["shape"], "start": base + e["data_offsets"][0],
                   "end": base + e["data_offsets"][1]}
            for name, e in header.items() if name != "__metadata__"}
