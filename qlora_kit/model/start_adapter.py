"""`model.adapter`: a run that continues from a trained LoRA adapter (the usual "SFT, then DPO" flow).

The adapter's own LoRA shape (rank, alpha, targets, dropout, rsLoRA) replaces the recipe's lora section when the
recipe is resolved, so the backend builds exactly that LoRA on the 4-bit base; its saved weights are then loaded
into it (peft's set_peft_model_state_dict, the same keys for both backends). Training continues that adapter, so
the merge and export of the result need nothing new. For dpo and kto, TRL keeps a frozen copy of the loaded
adapter as the reference (training/preference.py).

Light at import (json and paths only): `prepare` resolves the directory before any model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from qlora_kit.errors import UsageError

FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_dir(spec: str) -> Path:
    """A run directory (its adapter/) or an adapter directory; a UsageError naming model.adapter otherwise."""
    path = Path(spec)
    for candidate in (path / "adapter", path):
        if all((candidate / f).is_file() for f in FILES):
            return candidate.absolute()
    where = "" if path.is_absolute() else f" (relative paths are read from the current directory, {Path.cwd()})"
    if not path.exists():
        raise UsageError(f"model.adapter: {spec}: no such directory{where}")
    raise UsageError(f"model.adapter: {spec}: no LoRA adapter there (expected {' and '.join(FILES)}, or a run "
                     "directory with adapter/ from a finished `qlora-kit train`)")


def adapter_lora(spec: str, base_name: str) -> dict:
    """The lora section the adapter was trained with; a UsageError when it was trained on another base."""
    path = adapter_dir(spec)
    config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    recipe = path.parent / "recipe.yaml"
    if recipe.is_file():  # a qlora-kit run: its recipe names the base it trained on
        import yaml

        trained_on = (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("model", {}).get("name")
        if trained_on and trained_on != base_name:
            raise UsageError(f"model.adapter: {spec} was trained on {trained_on}, but model.name is {base_name}; "
                             "an adapter only fits the base it was trained on")
    targets = sorted(config.get("target_modules") or []) + sorted(config.get("modules_to_save") or [])
    if not targets:
        raise UsageError(f"model.adapter: {path}/adapter_config.json names no target_modules")
    return {"r": int(config["r"]), "alpha": int(config["lora_alpha"]), "dropout": float(config.get("lora_dropout", 0)),
            "target_modules": targets, "rslora": bool(config.get("use_rslora", False))}


def load_adapter_weights(model, spec: str) -> None:
    """Load the saved adapter into the freshly built LoRA of the same shape (every tensor must find its place)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = adapter_dir(spec)
    result = set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k or "modules_to_save" in k]
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k and ".default." in k]
    if unexpected or missing:
        first = (unexpected or missing)[0]
        raise UsageError(f"model.adapter: {path}: {len(unexpected)} saved tensors do not fit this model and "
                         f"{len(missing)} of its LoRA tensors are not in the file (first: {first}); was it trained "
                         "on another base?")
