"""Resolve the recipe's "auto" values for the device at hand (the resolved recipe is what the run records)."""

from __future__ import annotations

from qlora_kit.errors import UsageError
from qlora_kit.model.backends import Runtime
from qlora_kit.recipe.schema import Recipe

# (GPU, CPU) defaults. GPU: small micro-batches accumulated, 8-bit AdamW and checkpointing to save VRAM.
# CPU: no accumulation or checkpointing (they only cost time on small models), full-precision AdamW.
AUTO = {
    "batch_size": (2, 4),
    "grad_accum": (4, 1),
    "optimizer": ("adamw_8bit", "adamw_torch"),
    "gradient_checkpointing": (True, False),
}


def detect_device(requested: str) -> str:
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise UsageError("train.device: cuda was asked for but no CUDA GPU is visible; use train.device: auto or cpu")
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested


def pick_dtype(requested: str, device: str) -> str:
    import torch

    if requested != "auto":
        return requested
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"  # bf16 matmuls are slow on most CPUs, and fp32 keeps CPU runs comparable across machines


def resolve(recipe: Recipe) -> tuple[Recipe, Runtime]:
    device = detect_device(recipe.train.device)
    gpu = device == "cuda"
    train = recipe.train.model_dump()
    for key, (on_gpu, on_cpu) in AUTO.items():
        if train[key] == "auto":
            train[key] = on_gpu if gpu else on_cpu
    train["device"] = device
    model = recipe.model.model_dump()
    model["dtype"] = pick_dtype(recipe.model.dtype, device)
    resolved = Recipe.model_validate({**recipe.model_dump(), "model": model, "train": train})
    runtime = Runtime(device=device, dtype=model["dtype"], gradient_checkpointing=bool(train["gradient_checkpointing"]),
                      seed=recipe.train.seed)
    return resolved, runtime
