"""Registries for what varies (data formats, chat templates, backends, quant types, built-in models, ...).

A registry is a dict that refuses to register a name twice; adding a variant is one object plus one `add` call,
and lookups that miss can list `choices()`. A registry with a `plugin_group` also takes variants from installed
packages: each entry point in that group names an object with a `name` (a `Format`, a `ChatTemplate`), added the
first time the registry is asked what it holds. The recipe schema's choices come from the registries
(`registry_choice`), so a plugin's format or template validates like a built-in one.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from typing import Annotated, Any, TypeVar

T = TypeVar("T")


class Registry(dict):
    def __init__(self, kind: str, plugin_group: str | None = None):
        super().__init__()
        self.kind = kind
        self.plugin_group = plugin_group
        self._plugins_loaded = plugin_group is None

    def add(self, name: str, item: T) -> T:
        if dict.__contains__(self, name):  # not `in`: that would load plugins while the built-ins register
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self[name] = item
        return item

    def choices(self) -> str:
        self.load_plugins()
        return ", ".join(self)

    def load_plugins(self) -> "Registry":
        """Add the variants of installed packages (once). A plugin that fails to load is skipped with a warning:
        the built-in variants still work, and naming the plugin's variant then fails with the list of valid ones."""
        if self._plugins_loaded:
            return self
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in sorted(entry_points(group=self.plugin_group), key=lambda e: e.name):
            try:
                item = ep.load()
                self.add(getattr(item, "name", ep.name), item)
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"qlora-kit: {self.kind} plugin {ep.name} ({ep.value}) not loaded: "
                              f"{type(exc).__name__}: {exc}", stacklevel=2)
        return self

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return super().__contains__(name)


def did_you_mean(word: str, choices) -> str:
    """" (did you mean 'X'?)" naming the closest of `choices` (in any case: Q8_O finds q8_0), or "" if none is close."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


def registry_choice(where: str, extra: tuple[str, ...] = (), fold_case: bool = False) -> Any:
    """A string field whose allowed values are a registry's names (`module:ATTR`, imported when first needed, so
    the schema module stays light and free of import cycles) plus `extra` (e.g. "auto"). A miss is pydantic's
    literal_error, so `validate` words it like any other choice; the JSON schema lists the values as an enum.
    `fold_case`: any case is accepted and stored as the registry spells it (lower case), as its CLI flag does."""
    from pydantic import AfterValidator, Field
    from pydantic_core import PydanticCustomError

    def names() -> list[str]:
        module, attr = where.split(":")
        registry = getattr(importlib.import_module(module), attr)
        return [*extra, *registry.load_plugins()]

    def check(value: str) -> str:
        allowed = names()
        if fold_case:
            value = value.lower()
        if value not in allowed:
            expected = ", ".join(repr(n) for n in allowed[:-1]) + f" or {allowed[-1]!r}"
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    return Annotated[str, AfterValidator(check), Field(json_schema_extra=lambda schema: schema.update(enum=names()))]
