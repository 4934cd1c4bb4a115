"""Disk and memory an export needs, estimated before anything is written (as `plan` does for training).

Memory is what the process itself must allocate, stage by stage; the peak is the largest stage, not their sum:
  convert    a few row blocks (qlora_kit/gguf/tensors/convert.py: BLOCK_BYTES; K-quants too, ggml's quantizer
             encodes the same blocks) + the tokenizer's parsed JSON (~8x tokenizer.json; measurements:
             benchmarks/RESULTS.md) + the tokenizer code transformers imports;
  verify     the HF reference: one decoder layer in float32 + the reference logits; llama.cpp: its logits
             buffers (ours and llama-cpp-python's, n_ctx x vocab floats each) and compute buffers.
The GGUF file itself is mapped by llama.cpp, not allocated: its pages are file cache that the kernel can drop, so
it is not counted here (RESULTS.md shows it in peak RSS all the same).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qlora_kit.errors import UsageError

MiB = 2**20
FIXED = 160 * MiB  # tokenizer and model code transformers imports on top of the import-only process (measured)
LLAMA_CPP_COMPUTE = 256 * MiB  # llama.cpp's compute and KV buffers for a short probe on CPU (generous)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (then the check is skipped)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def require(needed: int, what: str) -> None:
    free = available_memory()
    if free is not None and free < needed:
        raise UsageError(f"not enough memory for {what}: it needs about {needed / 2**30:.2f} GiB, "
                         f"{free / 2**30:.2f} GiB available; close other programs, or pass --no-verify / fewer "
                         "--samples if verification is what does not fit")


def require_disk(out: Path, needed: float) -> None:
    free = shutil.disk_usage(out).free
    if free < needed:
        raise UsageError(f"not enough disk space at {out}: the export needs about {needed / 2**30:.2f} GiB, "
                         f"{free / 2**30:.2f} GiB free")


def conversion_bytes(model_dir: Path) -> int:
    from qlora_kit.gguf.tensors.convert import BLOCK_BYTES

    tokenizer = model_dir / "tokenizer.json"
    return FIXED + 4 * BLOCK_BYTES + 8 * (tokenizer.stat().st_size if tokenizer.is_file() else 0)


def verification_bytes(ckpt, rows: list[list[int]]) -> int:
    """One float32 decoder layer, the reference logits, and llama.cpp's logits buffers for the longest row."""
    layers: dict[str, int] = {}
    for name in ckpt.names():
        parts = name.split(".layers.", 1)
        if len(parts) == 2:
            index = parts[1].split(".", 1)[0]
            layers[index] = layers.get(index, 0) + _numel(ckpt.shape(name))
    vocab = int(ckpt.config["vocab_size"])
    tokens = sum(len(r) for r in rows)
    longest = max((len(r) for r in rows), default=0) + 8
    reference = 4 * tokens * vocab  # held from the HF pass until the last GGUF is checked
    llama = 2 * 4 * longest * vocab + 4 * tokens * vocab + LLAMA_CPP_COMPUTE
    return FIXED + reference + max(4 * max(layers.values(), default=0), llama)  # the two passes run one after the other


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
