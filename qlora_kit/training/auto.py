"""Resolve the recipe's "auto" values for the device at hand (the resolved recipe is what the run records)."""

from __future__ import annotations

from dataclasses import dataclass

from qlora_kit.distributed.env import DistEnv, recorded_section, worker_strategy
from qlora_kit.recipe.schema import Recipe
from qlora_kit.training.device import detect_device

# (GPU, CPU) defaults. GPU: small micro-batches accumulated, 8-bit AdamW and checkpointing to save VRAM.
# CPU: no accumulation or checkpointing (they only cost time on small models), full-precision AdamW.
AUTO = {
    "batch_size": (2, 4),
    "grad_accum": (4, 1),
    "optimizer": ("adamw_8bit", "adamw_torch"),
    "gradient_checkpointing": (True, False),
}


@dataclass
class Runtime:
    """Device-dependent choices, resolved from the recipe's "auto" values by `resolve` below."""

    device: str  # "cpu" | "cuda"
    dtype: str  # "float32" | "bfloat16" | "float16"
    gradient_checkpointing: bool
    seed: int
    local_rank: int = 0  # this process's GPU in a distributed run (torchrun's LOCAL_RANK)
    strategy: str = "none"  # none | ddp | fsdp (qlora_kit.distributed)

    @property
    def device_map(self) -> dict:
        """Where the whole model loads: this rank's own GPU when several processes share a machine."""
        if self.device == "cuda" and self.strategy != "none":
            return {"": f"cuda:{self.local_rank}"}
        return {"": self.device}

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def auto_dtype(device: str, bf16: bool) -> str:
    """model.dtype auto: bfloat16 on GPUs that support it, else float16; float32 on CPU (bf16 matmuls are slow on
    most CPUs, and fp32 keeps CPU runs comparable across machines). `plan` applies it to GPUs it only knows of."""
    if device == "cuda":
        return "bfloat16" if bf16 else "float16"
    return "float32"


def pick_dtype(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return auto_dtype(device, device == "cuda" and torch.cuda.is_bf16_supported())


def resolve(recipe: Recipe, dist=None) -> tuple[Recipe, Runtime]:
    dist = dist or DistEnv()
    device = detect_device(recipe.train.device)
    gpu = device == "cuda"
    train = recipe.train.model_dump()
    if recipe.train.method == "grpo" and train["batch_size"] == "auto":
        train["batch_size"] = recipe.grpo.num_generations  # one prompt's group of completions per micro-step
    for key, (on_gpu, on_cpu) in AUTO.items():
        if train[key] == "auto":
            train[key] = on_gpu if gpu else on_cpu
    train["device"] = device
    model = recipe.model.model_dump()
    model["dtype"] = pick_dtype(recipe.model.dtype, device)
    distributed = {**recipe.distributed.model_dump(), **recorded_section(recipe, dist),
                   "node_rank": 0, "master_addr": "127.0.0.1", "master_port": 29500}
    lora = recipe.lora.model_dump()
    if recipe.model.adapter:  # continue a trained adapter: its own LoRA shape (model/start_adapter.py)
        from qlora_kit.model.start_adapter import adapter_lora

        lora = adapter_lora(recipe.model.adapter, recipe.model.name)
    resolved = _validated({**recipe.model_dump(), "model": model, "train": train, "lora": lora,
                           "distributed": distributed})
    runtime = Runtime(device=device, dtype=model["dtype"], gradient_checkpointing=bool(train["gradient_checkpointing"]),
                      seed=recipe.train.seed, local_rank=dist.local_rank, strategy=worker_strategy(recipe, dist))
    return resolved, runtime


def _validated(data: dict) -> Recipe:
    """The resolved recipe; a rule that only the resolved values break (grpo.num_generations must divide the
    resolved batch) is a one-line UsageError, as it would be had the values been written."""
    from pydantic import ValidationError

    from qlora_kit.errors import UsageError

    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UsageError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
