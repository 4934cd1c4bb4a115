"""Hooks: code that hears every event of a run (progress UIs, loggers, schedulers).

A hook is any object with `on_event(event)`; `Hook` is a convenient base whose `on_event` dispatches to one method
per kind. Hooks come from code (`qk.train(..., hooks=[...])`), the CLI (`--hook package.module:attr`, repeatable)
and installed packages (entry-point group `qlora_kit.hooks`, loaded for every run unless `--no-plugins`). A hook
only ever sees event models (plain data), never Hugging Face objects, and a hook that raises is reported as a
`warning` event while the run goes on.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable

from qlora_kit.errors import UsageError
from qlora_kit.events import BaseEvent

HOOK_GROUP = "qlora_kit.hooks"


class Hook:
    """Subclass and override the methods for the kinds you care about; `on_event` calls them."""

    def on_event(self, event: BaseEvent) -> None:
        method = _DISPATCH.get(event.event)
        if method:
            getattr(self, method)(event)

    def on_run_start(self, event) -> None: ...
    def on_step(self, event) -> None: ...
    def on_eval(self, event) -> None: ...
    def on_checkpoint(self, event) -> None: ...
    def on_stage(self, event) -> None: ...
    def on_artifact(self, event) -> None: ...
    def on_run_end(self, event) -> None: ...
    def on_error(self, event) -> None: ...


_DISPATCH = {"run_start": "on_run_start", "step": "on_step", "eval": "on_eval", "checkpoint": "on_checkpoint",
             "stage": "on_stage", "artifact": "on_artifact", "run_end": "on_run_end", "error": "on_error"}


def check_hook(hook: Any, where: str) -> Any:
    if not callable(getattr(hook, "on_event", None)):
        raise UsageError(f"{where}: {type(hook).__name__} object has no on_event(event) method; subclass qk.Hook or "
                         "define on_event")
    return hook


def load_hook_spec(spec: str) -> Any:
    """`package.module:attr` -> a hook; a class is instantiated without arguments."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--hook {spec!r}: expected package.module:attr, e.g. --hook my_tool.hooks:Progress")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001  (any import failure is the user's hook, reported in one line)
        raise UsageError(f"--hook {spec}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"--hook {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        obj = obj()
    return check_hook(obj, f"--hook {spec}")


def plugin_hooks(strict: bool) -> tuple[list[Any], list[str]]:
    """Hooks of installed packages (entry points) and one warning line per plugin that failed to load.
    With `strict`, a plugin that fails is an error instead."""
    from importlib.metadata import entry_points

    hooks, warnings = [], []
    for ep in sorted(entry_points(group=HOOK_GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            hooks.append(check_hook(obj() if isinstance(obj, type) else obj, f"plugin {ep.name} ({ep.value})"))
        except Exception as exc:  # noqa: BLE001
            message = f"plugin hook {ep.name} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            if strict:
                raise UsageError(message + " (drop --strict-plugins to run without it)") from None
            warnings.append(message)
    return hooks, warnings


class HookSet:
    """Calls every hook for every event; a hook that raises becomes a `warning` event (not sent back to it)."""

    def __init__(self, hooks: Iterable[Any], warn: Callable[[str, str], None]):
        self.hooks = [check_hook(h, "hooks") for h in hooks]
        self.warn = warn
        self._failing: set[int] = set()

    def __call__(self, event: BaseEvent) -> None:
        failed = []
        for hook in self.hooks:
            if id(hook) in self._failing:
                continue  # the warning about this hook's own failure
            try:
                hook.on_event(event)
            except Exception as exc:  # noqa: BLE001  (a broken hook must not end a training run)
                failed.append((hook, exc))
        # Warn after every hook heard the event, so all of them see the events in `seq` order.
        for hook, exc in failed:
            self._failing.add(id(hook))
            try:
                self.warn(f"hook {type(hook).__name__} raised on {event.event} event: {type(exc).__name__}: {exc}",
                          "hook")
            finally:
                self._failing.discard(id(hook))
