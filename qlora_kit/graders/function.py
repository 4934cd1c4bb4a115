"""Custom TRL-style reward functions, run in this process (trusted code the recipe names explicitly):

- `{"type": "function", "function": "my_module:my_reward"}`: imported from sys.path, with the base directory put
  first on sys.path for the import (and taken off again, so that it cannot shadow packages imported later);
- `{"type": "function", "function": "NAME"}`: the entry point NAME in the group `qlora_kit.rewards` of an
  installed package (`[project.entry-points."qlora_kit.rewards"] NAME = "pkg.module:function"`).

The callable has TRL's reward-function signature and is called the way TRL calls it, once per batch:
`f(prompts=[...], completions=[...], **columns) -> list[float]`. `completions` are as the trainer gave them
(strings, or TRL's conversational lists of messages); `columns` hold each item field as a list (None where a row
lacks the field), as TRL passes dataset columns; `prompts` are the caller's, else each row's "prompt" field ("" if
none). Its default name is the function's own name.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

from qlora_kit.errors import first_line
from qlora_kit.graders.base import Batch, Grader, rows_named, short_repr
from qlora_kit.graders.spec import Spec

REWARD_GROUP = "qlora_kit.rewards"
_RESERVED = ("prompts", "completions")


def default_name(ref: object) -> str | None:
    """The name a function grader gets when its spec has none: `pkg.mod:score` -> "score", "NAME" -> "NAME"."""
    if not isinstance(ref, str):
        return None
    return ref.rpartition(":")[2].rpartition(".")[2] or None


def import_function(spec: Spec, ref: str) -> Callable:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise spec.error(f"function {ref!r}: expected module:function, e.g. my_rewards:format_reward")
    base = str(spec.base_dir)
    added = base not in sys.path
    if added:
        sys.path.insert(0, base)
    importlib.invalidate_caches()
    try:
        found = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except Exception as exc:  # noqa: BLE001  (the user's module: any failure is one line)
        raise spec.error(f"cannot import {ref}: {type(exc).__name__}: {first_line(exc)}") from None
    finally:
        if added and base in sys.path:
            sys.path.remove(base)
    return found


def entry_point_function(spec: Spec, name: str) -> Callable:
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=REWARD_GROUP)}
    if name not in found:
        available = ", ".join(sorted(found)) or "none installed"
        raise spec.error(f"no reward function {name!r} in entry point group {REWARD_GROUP} (available: "
                         f"{available}); or name one as module:function")
    try:
        return found[name].load()
    except Exception as exc:  # noqa: BLE001
        raise spec.error(f"entry point {name} ({found[name].value}) failed to load: "
                         f"{type(exc).__name__}: {first_line(exc)}") from None


def columns(items: list[dict]) -> dict[str, list]:
    """Each item field as a list, in row order (None where a row lacks it), as TRL passes dataset columns."""
    keys = dict.fromkeys(key for item in items for key in item if key not in _RESERVED)
    return {key: [item.get(key) for item in items] for key in keys}


class FunctionGrader(Grader):
    type = "function"

    def __init__(self, spec: Spec):
        spec.allow("function")
        ref = spec.get("function")
        super().__init__(spec.name, f"function {ref}")
        self.function = import_function(spec, ref) if ":" in ref else entry_point_function(spec, ref)
        if not callable(self.function):
            raise spec.error(f"{ref} is a {type(self.function).__name__}, not a function")

    def score(self, batch: Batch) -> list[float]:
        if not len(batch):
            return []
        rows = rows_named(batch.wheres)
        prompts = batch.prompts if batch.prompts is not None else [item.get("prompt", "") for item in batch.items]
        try:
            out = self.function(prompts=prompts, completions=batch.raw, **columns(batch.items))
        except Exception as exc:  # noqa: BLE001  (the user's function: any failure is one line)
            raise self.fail(rows, f"raised {type(exc).__name__}: {first_line(exc)}") from None
        if hasattr(out, "tolist"):  # a numpy array or a torch tensor
            out = out.tolist()
        if not isinstance(out, (list, tuple)):
            raise self.fail(rows, f"returned {short_repr(out)} ({type(out).__name__}), not a list of {len(batch)} "
                                  "scores")
        if len(out) != len(batch):
            raise self.fail(rows, f"returned {len(out)} scores for {len(batch)} completions")
        return [self.checked(value, where) for value, where in zip(out, batch.wheres)]
