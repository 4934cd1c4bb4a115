"""The Python API: what `import qlora_kit as qk` offers a host program (UI, agent, notebook, scheduler).

Every call takes a recipe (path, dict or Recipe), reports through events (hooks, sinks), raises QKError subclasses
(the same ones the CLI maps to exit codes; never SystemExit) and returns a typed result. `qk.train` runs in the
calling process on any thread (it imports Unsloth there); `qk.start` runs the same training in a child process, so
the host never imports torch or Unsloth.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterable

from qlora_kit.control import CancelToken
from qlora_kit.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, QKError
from qlora_kit.eventlog import EventLog
from qlora_kit.recipe import Recipe
from qlora_kit.recipe import load_recipe as _load_recipe
from qlora_kit.results import TrainResult, train_result

if TYPE_CHECKING:
    from qlora_kit.training.context import RunContext


def load_recipe(source: str | Path | dict | Recipe, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """A validated Recipe from a YAML path, a dict or a Recipe, with dotted-key overrides applied."""
    return _load_recipe(source, overrides)


def make_log(hooks: Iterable[Any] = (), events: IO[str] | None = None, plugins: bool = True,
             strict_plugins: bool = False) -> tuple[EventLog, list[str]]:
    """An EventLog delivering to `events` (a text stream) and to the hooks (code + installed plugins).
    Returns it with the plugin warnings still to emit (once the run's log is attached)."""
    log = EventLog(sinks=[events] if events is not None else [])
    return log, add_hooks(log, hooks, plugins, strict_plugins)


def add_hooks(log: EventLog, hooks: Iterable[Any], plugins: bool, strict_plugins: bool) -> list[str]:
    from qlora_kit.hooks import HookSet, plugin_hooks

    found, warnings = plugin_hooks(strict_plugins) if plugins else ([], [])
    log.deliver.append(HookSet([*hooks, *found], warn=lambda message, source: log.emit(
        "warning", message=message, source=source)))
    return warnings


def train(recipe: str | Path | dict | Recipe, *, hooks: Iterable[Any] = (), cancel: CancelToken | None = None,
          resume: bool = False, overwrite: bool = False, overrides: dict[str, Any] | list[str] | None = None,
          events: IO[str] | None = None, plugins: bool = True, strict_plugins: bool = False,
          console=None, verbose: bool | None = None) -> TrainResult:
    """Train the recipe in this process (any thread). Cancelled runs return status "cancelled" (resume with
    resume=True); failures raise a QKError subclass after an `error` event.

    Quiet by default, like the CLI: while the call runs, what the libraries print on this thread (Unsloth's banner,
    transformers' "Loading weights" bars, library warnings and log records) stays out of the host's stdout and
    stderr; qlora-kit's own warning lines, and whatever `hooks` and `console` print, still show. Everything is put
    back when the call returns (qlora_kit/runtime/quiet.py says what is touched and why). `verbose=True`, or
    QLORA_KIT_LOG=verbose in the environment when `verbose` is None, lets the libraries' output through."""
    from qlora_kit.runtime.compat import verbose_requested
    from qlora_kit.runtime.quiet import library_output_hidden, shown
    from qlora_kit.training.context import RunContext, quiet

    hide = not verbose_requested(verbose)
    log, plugin_warnings = make_log(hooks, events, plugins, strict_plugins)
    if hide:  # the host's own code runs on this thread: its output is not the libraries'
        log.deliver[:] = [shown(deliver) for deliver in log.deliver]
        console = shown(console) if console is not None else None
    ctx = RunContext(log, cancel or CancelToken(), resume=resume, overwrite=overwrite, console=console or quiet,
                     warnings=plugin_warnings)
    with library_output_hidden(hide):
        return run_training(recipe, overrides, ctx)


def run_training(recipe, overrides, ctx: RunContext) -> TrainResult:
    """Shared by `qk.train` and `qlora-kit train`: parse the recipe into the RunContext (train/context.py) and
    train it. `ctx.dist` None means this process alone (the API), which cannot launch several processes."""
    from qlora_kit.training.runner import train_recipe

    try:
        ctx.load(recipe, overrides)
        if ctx.dist is None:
            _refuse_in_process_launch(ctx.recipe)
        run = train_recipe(ctx)
    except QKError as exc:
        ctx.log.report_error(exc)
        raise
    code = EXIT_OK
    if run.status == "interrupted":
        code = EXIT_TERMINATED if ctx.cancel.reason == "SIGTERM" else EXIT_INTERRUPTED
    return train_result(run.root, exit_code=code)


def _refuse_in_process_launch(recipe: Recipe) -> None:
    """Several processes cannot start inside the caller's process: `qk.start` runs the CLI, which launches them."""
    from qlora_kit.distributed.env import current, plan_launch

    if not current().active and plan_launch(recipe) is not None:
        from qlora_kit.errors import UsageError

        raise UsageError("distributed: a run on several processes cannot start inside this process; use "
                         "qk.start(recipe) (a child `qlora-kit train` that launches torchrun) or the CLI")


def start(recipe: str | Path | dict | Recipe, *, hooks: Iterable[Any] = (), cancel: CancelToken | None = None,
          resume: bool = False, overwrite: bool = False, overrides: dict[str, Any] | list[str] | None = None,
          plugins: bool = True, log_file: str | Path | None = None):
    """Start the training in a child process and return its `Job` at once (events stream live). The child is
    `qlora-kit train`, as quiet as the CLI; its stderr goes to `log_file` (QLORA_KIT_LOG=verbose in the
    environment lets the libraries' output into it)."""
    from qlora_kit.jobs import Job

    return Job(_load_recipe(recipe, overrides), hooks=hooks, cancel=cancel, resume=resume, overwrite=overwrite,
               plugins=plugins, log_file=log_file)


def events_schema() -> dict:
    """The JSON Schema (draft 2020-12) of one event, generated from the event models."""
    from qlora_kit.events import events_schema as schema

    return schema()


def unsloth_imported() -> bool:
    """Unsloth patches transformers for the whole process; stages that need plain transformers then run apart."""
    return "unsloth" in sys.modules
