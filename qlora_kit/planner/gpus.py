"""Known GPUs: memory and dense bf16 (fp16 where bf16 is missing) tensor-core peak, for `plan --device` and MFU.

Peaks are the vendors' dense (no sparsity) figures. Matching is by lower-cased name fragments, so the name
torch reports ("NVIDIA H100 80GB HBM3") and a short one on the command line ("h100") both find the entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_kit.recipe.registry import Registry

GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: int
    peak_flops: float
    bf16: bool = True
    aliases: tuple[str, ...] = ()


GPUS: Registry = Registry("GPU")
for _gpu in (
    Gpu("h200", 141 * 10**9, 989e12),
    Gpu("h100", 80 * GIB, 989e12, aliases=("h100 80gb", "h100-sxm")),
    Gpu("a100-80gb", 80 * GIB, 312e12, aliases=("a100 80gb", "a100-sxm4-80gb")),
    Gpu("a100", 40 * GIB, 312e12, aliases=("a100-sxm4-40gb", "a100 40gb")),
    Gpu("l40s", 48 * GIB, 362e12),
    Gpu("a6000", 48 * GIB, 155e12, aliases=("rtx a6000",)),
    Gpu("l4", 24 * GIB, 121e12),
    Gpu("a10g", 24 * GIB, 70e12, aliases=("a10",)),
    Gpu("rtx4090", 24 * GIB, 165e12, aliases=("4090", "rtx 4090")),
    Gpu("rtx3090", 24 * GIB, 71e12, aliases=("3090", "rtx 3090")),
    Gpu("rtx4080", 16 * GIB, 97e12, aliases=("4080", "rtx 4080")),
    Gpu("rtx4070", 12 * GIB, 58e12, aliases=("4070", "rtx 4070")),
    Gpu("rtx3060", 12 * GIB, 25e12, aliases=("3060", "rtx 3060")),
    Gpu("t4", 15 * GIB, 65e12, bf16=False, aliases=("tesla t4",)),
    Gpu("v100", 16 * GIB, 125e12, bf16=False, aliases=("tesla v100",)),
):
    GPUS.add(_gpu.name, _gpu)


def find_gpu(name: str | None) -> Gpu | None:
    if not name:
        return None
    text = name.lower().replace("nvidia", "").replace("geforce", "").strip()
    if text in GPUS:
        return GPUS[text]
    # Longest matching fragment wins ("a100-80gb" before "a100").
    best = None
    for gpu in GPUS.values():
        for fragment in (gpu.name, *gpu.aliases):
            if fragment in text and (best is None or len(fragment) > best[0]):
                best = (len(fragment), gpu)
    return best[1] if best else None


def peak_flops_for(name: str | None) -> float | None:
    gpu = find_gpu(name)
    return gpu.peak_flops if gpu else None
