"""A saved peft LoRA adapter, as deltas keyed by the base checkpoint's tensor names.

    linear      W' = W + s * B @ A                 (lora_A: r x in, lora_B: out x r)
    embedding   E' = E + s * (B @ A).T             (lora_embedding_A: r x vocab, lora_embedding_B: dim x r)
    full        W' = the saved tensor              (modules_to_save, e.g. a fully trained lm_head)
    s = alpha / r, or alpha / sqrt(r) with rsLoRA.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from qlora_kit.errors import UsageError

PREFIX = "base_model.model."
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class LoraAdapter:
    path: Path
    r: int
    alpha: float
    rslora: bool
    linear: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    embedding: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    full: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def touches(self, name: str) -> bool:
        return name in self.linear or name in self.embedding or name in self.full

    def apply(self, name: str, base: torch.Tensor) -> torch.Tensor:
        """The merged tensor for `name`, in float32 (callers cast to the output dtype)."""
        if name in self.full:
            return self.full[name].float()
        out = base.float()
        if name in self.linear:
            a, b = self.linear[name]
            out = out + self.scale * (b.float() @ a.float())
        elif name in self.embedding:
            a, b = self.embedding[name]
            out = out + self.scale * (b.float() @ a.float()).T
        return out

    def apply_rows(self, name: str, base: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of `apply(name, whole base)`, from those rows of the base alone (float32): the LoRA
        update of a block of rows is B[rows] @ A (linear) or (B @ A[:, rows]).T (embedding), never the whole
        s*B@A, which for a 150k-row embedding is a 2.4 GiB float32 matrix."""
        if name in self.full:
            return self.full[name][start:stop].float()
        out = base.float()
        if name in self.linear:
            a, b = self.linear[name]
            out = out + self.scale * (b[start:stop].float() @ a.float())
        elif name in self.embedding:
            a, b = self.embedding[name]
            out = out + self.scale * (b.float() @ a[:, start:stop].float()).T
        return out

    def check_fits(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Refuse an adapter trained on a different base: every name must exist with a compatible shape."""
        problems = []
        for name, (a, b) in self.linear.items():
            want = (b.shape[0], a.shape[1])
            if name not in shapes:
                problems.append(f"{name} is not in the base model")
            elif shapes[name] != want:
                problems.append(f"{name} has shape {tuple(shapes[name])} in the base but the adapter expects {want}")
        for name, (a, b) in self.embedding.items():
            want = (a.shape[1], b.shape[0])
            if name not in shapes or shapes[name] != want:
                problems.append(f"{name}: base {tuple(shapes.get(name, ())) or 'missing'}, adapter expects {want}")
        for name, tensor in self.full.items():
            if name not in shapes or shapes[name] != tuple(tensor.shape):
                problems.append(f"{name}: base {tuple(shapes.get(name, ())) or 'missing'}, adapter has "
                                f"{tuple(tensor.shape)}")
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UsageError(f"{self.path}: the adapter does not fit this base model (was it trained on another "
                             f"one?): {problems[0]}{more}")


def load_adapter(path: str | Path) -> LoraAdapter:
    path = Path(path)
    missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
    if missing:
        raise UsageError(f"{path}: missing adapter file(s) {', '.join(missing)}")
    config = json.loads((path / "adapter_config.json").read_text())
    unsupported = [k for k in ("use_dora", "fan_in_fan_out", "alpha_pattern", "rank_pattern") if config.get(k)]
    if config.get("peft_type", "LORA") != "LORA" or unsupported:
        raise UsageError(f"{path}: only plain LoRA adapters can be merged (found {config.get('peft_type')} with "
                         f"{', '.join(unsupported) or 'no options'})")
    adapter = LoraAdapter(path, int(config["r"]), float(config["lora_alpha"]), bool(config.get("use_rslora")))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(path / "adapter_model.safetensors").items():
        key = key[len(PREFIX):] if key.startswith(PREFIX) else key
        for marker, kind in ((".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_embedding_A", "eA"),
                             (".lora_embedding_B", "eB")):
            if key.endswith(marker):
                pairs.setdefault(key[: -len(marker)] + ".weight", {})[kind] = tensor
                break
        else:
            adapter.full[key.replace(".modules_to_save.default", "")] = tensor
    for name, parts in pairs.items():
        if {"A", "B"} <= parts.keys():
            adapter.linear[name] = (parts["A"], parts["B"])
        elif {"eA", "eB"} <= parts.keys():
            adapter.embedding[name] = (parts["eA"], parts["eB"])
        else:
            raise UsageError(f"{path}: incomplete LoRA pair for {name} ({', '.join(sorted(parts))} only)")
    return adapter
