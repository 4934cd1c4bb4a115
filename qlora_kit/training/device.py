"""Which device trains: the recipe's train.device checked against what this machine has (imports torch when
called). Apart from train/auto.py so that the distributed launcher can check a recipe's device without importing
the recipe resolution that depends on it."""

from __future__ import annotations

from qlora_kit.errors import UsageError


def detect_device(requested: str) -> str:
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise UsageError("train.device: cuda was asked for but no CUDA GPU is visible; use train.device: auto or cpu")
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested
