"""Registries for what varies (data formats, chat templates, backends, built-in models, ...).

A registry is a dict that refuses to register a name twice; adding a variant is one object plus one `add` call,
and lookups that miss can list `choices()`.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, name: str, item: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self[name] = item
        return item

    def choices(self) -> str:
        return ", ".join(self)
