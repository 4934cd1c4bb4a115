"""A streaming safetensors writer: shards are planned from tensor shapes up front, then every tensor's bytes are
written as soon as it is computed. Peak memory is one tensor, not one shard (safetensors' own `save_file` needs
the whole shard in memory and then a serialized copy of it).

Format (safetensors): 8-byte little-endian header length, a JSON header mapping names to dtype, shape and byte
offsets (plus "__metadata__"), then the raw little-endian tensor bytes in header order.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
               torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
               torch.float64: "F64"}


@dataclass
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class Shard:
    filename: str
    tensors: list[PlannedTensor] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(tensors: list[PlannedTensor], max_shard_bytes: int) -> list[Shard]:
    """Greedy, in the given order; a tensor larger than the limit gets a shard of its own."""
    shards: list[Shard] = [Shard("")]
    for t in tensors:
        if shards[-1].tensors and shards[-1].nbytes + t.nbytes > max_shard_bytes:
            shards.append(Shard(""))
        shards[-1].tensors.append(t)
    total = len(shards)
    for i, shard in enumerate(shards, start=1):
        shard.filename = "model.safetensors" if total == 1 else f"model-{i:05d}-of-{total:05d}.safetensors"
    return shards


class ShardWriter:
    """Write one planned shard; `write(name, tensor)` must follow the plan's order, shapes and dtypes."""

    def __init__(self, directory: Path, shard: Shard, metadata: dict[str, str] | None = None):
        self.shard = shard
        self.path = Path(directory) / shard.filename
        header: dict = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for t in shard.tensors:
            header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as safetensors does
        self._fh = open(self.path, "wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        planned = self.shard.tensors[self._next]
        if name != planned.name or tuple(tensor.shape) != planned.shape or tensor.dtype != planned.dtype:
            raise ValueError(f"{name} {tuple(tensor.shape)} {tensor.dtype} does not match the plan "
                             f"({planned.name} {planned.shape} {planned.dtype})")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._fh.write(memoryview(data))
        self._next += 1

    def write_blocks(self, name: str, blocks) -> None:
        """Write the next planned tensor from consecutive blocks of its rows, as they are computed."""
        planned = self.shard.tensors[self._next]
        if name != planned.name:
            raise ValueError(f"{name} does not match the plan ({planned.name})")
        written = 0
        for block in blocks:
            if block.dtype != planned.dtype or tuple(block.shape[1:]) != planned.shape[1:]:
                raise ValueError(f"{name}: a block {tuple(block.shape)} {block.dtype} does not match the plan "
                                 f"({planned.shape} {planned.dtype})")
            data = block.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            self._fh.write(memoryview(data))
            written += data.nbytes
        if written != planned.nbytes:
            raise ValueError(f"{name}: wrote {written} bytes, planned {planned.nbytes}")
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.shard.tensors):
            raise ValueError(f"{self.path.name}: {len(self.shard.tensors) - self._next} planned tensors not written")
        self._fh.close()


def write_index(directory: Path, shards: list[Shard]) -> None:
    if len(shards) == 1:
        return
    index = {"metadata": {"total_size": sum(s.nbytes for s in shards)},
             "weight_map": {t.name: s.filename for s in shards for t in s.tensors}}
    (Path(directory) / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
