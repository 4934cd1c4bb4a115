"""qlora_kit: recipe-driven QLoRA fine-tuning on Unsloth + bitsandbytes, and a training backend other tools drive.

    import qlora_kit as qk
    recipe = qk.load_recipe("recipes/tiny-demo.yaml", {"train.max_steps": 20})
    result = qk.train(recipe, hooks=[MyHook()], cancel=qk.CancelToken())   # any thread
    job = qk.start(recipe)                                                  # a child process; events stream live

Importing this package is cheap on purpose: the names below load on first use, and torch, transformers and
Unsloth are imported only by the stage that needs them, so `qlora-kit --help` and `qlora-kit validate` answer in
well under a second and a host that only uses `qk.start` never imports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_recipe": "qlora_kit.api", "train": "qlora_kit.api", "start": "qlora_kit.api",
    "merge": "qlora_kit.stages", "export": "qlora_kit.stages", "plan": "qlora_kit.stages",
    "bench": "qlora_kit.stages", "evaluate": "qlora_kit.stages", "EvalReport": "qlora_kit.stages",
    "events_schema": "qlora_kit.api",
    "Recipe": "qlora_kit.recipe.schema", "Job": "qlora_kit.jobs", "CancelToken": "qlora_kit.control",
    "Hook": "qlora_kit.hooks", "Artifact": "qlora_kit.results", "TrainResult": "qlora_kit.results",
    "MergeResult": "qlora_kit.results", "ExportResult": "qlora_kit.results", "Plan": "qlora_kit.stages",
    "BenchReport": "qlora_kit.stages", "parse_event": "qlora_kit.events", "read_events": "qlora_kit.eventlog",
    "QKError": "qlora_kit.errors", "UsageError": "qlora_kit.errors", "RecipeError": "qlora_kit.errors",
    "DataError": "qlora_kit.errors", "StageError": "qlora_kit.errors", "DiskFullError": "qlora_kit.errors",
    "OutOfMemoryError": "qlora_kit.errors", "Client": "qlora_kit.server.client",
    "MergeOptions": "qlora_kit.recipe.options", "ExportOptions": "qlora_kit.recipe.options",
    "EvalOptions": "qlora_kit.recipe.options", "PlanOptions": "qlora_kit.recipe.options",
    "BenchOptions": "qlora_kit.recipe.options",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qlora_kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily above
    from qlora_kit.api import events_schema, load_recipe, start, train
    from qlora_kit.control import CancelToken
    from qlora_kit.errors import (DataError, DiskFullError, OutOfMemoryError, QKError, RecipeError, StageError,
                                  UsageError)
    from qlora_kit.eventlog import read_events
    from qlora_kit.events import parse_event
    from qlora_kit.hooks import Hook
    from qlora_kit.jobs import Job
    from qlora_kit.recipe.options import BenchOptions, EvalOptions, ExportOptions, MergeOptions, PlanOptions
    from qlora_kit.recipe.schema import Recipe
    from qlora_kit.results import Artifact, ExportResult, MergeResult, TrainResult
    from qlora_kit.server.client import Client
    from qlora_kit.stages import BenchReport, EvalReport, Plan, bench, evaluate, export, merge, plan
