"""Turn a recipe (with its "auto" values) into the planner's input for a device, without importing torch."""

from __future__ import annotations

from qlora_kit.planner.estimate import PlanInput, resolve_targets
from qlora_kit.planner.grpo import grpo_fields
from qlora_kit.planner.shape import ModelShape
from qlora_kit.training.auto import AUTO, auto_dtype


def plan_input_for(recipe, shape: ModelShape, backend: str, device: str, seq_len: int, batch_size: int | None = None,
                   bf16: bool = True, strategy: str = "none", world_size: int = 1, method: str | None = None,
                   grad_accum: int | None = None) -> PlanInput:
    """method: train.method to plan (default: the recipe's; the bench plans each cell's). grad_accum: the
    accumulation to plan with (default: the recipe's; grpo's old-policy forward and generation round depend on it,
    and bench cells run 1)."""
    gpu = device == "cuda"
    t = recipe.train

    def pick(key: str):
        value = getattr(t, key)
        return AUTO[key][0 if gpu else 1] if value == "auto" else value

    dtype = recipe.model.dtype
    if dtype == "auto":
        dtype = auto_dtype(device, bf16)
    method = method or t.method
    grpo = {}
    if method == "grpo":
        # As training/auto.py resolves it: an "auto" batch is one prompt's group of completions.
        batch_size = batch_size or (recipe.grpo.num_generations if t.batch_size == "auto" else t.batch_size)
        grpo = grpo_fields(recipe.grpo, grad_accum or pick("grad_accum"), seq_len)
    return PlanInput(
        backend=backend, device=device, dtype=dtype, batch_size=batch_size or pick("batch_size"), seq_len=seq_len,
        lora_r=recipe.lora.r, target_modules=resolve_targets(shape, recipe.lora.target_modules),
        lora_dropout=recipe.lora.dropout, optimizer=pick("optimizer"),
        gradient_checkpointing=bool(pick("gradient_checkpointing")), load_in_4bit=recipe.model.load_in_4bit,
        strategy=strategy if world_size > 1 else "none", world_size=world_size,
        method=method, precompute_ref=recipe.preference.precompute_ref_log_probs, **grpo,
    )
