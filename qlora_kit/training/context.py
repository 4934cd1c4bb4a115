"""The one object a training run is passed through (prepare -> fit -> finish), and the small pieces every part of
training shares (the console, peak memory). Light: no torch at import.

Who builds the context: `qk.train` and `qlora-kit train` (through api.run_training, which parses the recipe into
it), and the distributed supervisor (distributed/launch.py). Each step then reads what it needs from it instead of
a list of parameters handed down four levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from qlora_kit.control import CancelToken
from qlora_kit.distributed.env import DistEnv
from qlora_kit.eventlog import EventLog
from qlora_kit.runtime.memory import peak_rss_bytes
from qlora_kit.recipe import Recipe
from qlora_kit.recipe import load_recipe as _load_recipe

Console = Callable[[str], None]  # one line of human output


def quiet(_text: str) -> None:
    """The API's default console: a library prints nothing unless asked."""


def peak_memory(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    return peak_rss_bytes()


@dataclass
class RunContext:
    """One training run: what to train, where its events go, and how the caller wants it run."""

    log: EventLog  # the run's events (events.jsonl once attached, --events sinks, hooks)
    cancel: CancelToken = field(default_factory=CancelToken)  # read at every step boundary
    resume: bool = False  # continue the run directory from its latest checkpoint
    overwrite: bool = False  # replace an existing run directory
    console: Console = quiet  # human output (stdout for the CLI, nothing for the API unless asked)
    resume_hint: str = ""  # the command that continues an interrupted run, printed when it stops
    stage_args: tuple[str, ...] = ()  # extra flags for the later stages' child processes (e.g. --debug)
    warnings: Sequence[str] = ()  # plugin warnings, emitted once the run's log is attached
    dist: DistEnv | None = None  # this process's place in a distributed run; None: the API's own process
    later_stages: bool = True  # run merge/export/eval (as the recipe enables them) after training
    recipe: Recipe | None = None  # the parsed recipe (load)
    source: str = "RECIPE"  # how messages name the recipe: its path, or RECIPE for a dict or a Recipe

    def load(self, recipe: str | Path | dict | Recipe, overrides: Any = None) -> RunContext:
        """Parse the recipe (a QKError for a bad one) into this context; returns it."""
        self.recipe = _load_recipe(recipe, overrides)
        self.source = str(recipe) if isinstance(recipe, (str, Path)) else "RECIPE"
        return self

    def for_rank(self) -> RunContext:
        """The context this process trains with: in a distributed run only rank 0 writes the run directory and
        events; the other ranks get a log that goes nowhere (but shares which errors were reported), no console
        and no warnings."""
        if self.dist is None or self.dist.is_main:
            return self
        return replace(self, log=self.log.muted(), console=quiet, warnings=())
