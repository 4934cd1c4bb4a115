"""Turn `model.name` into something a loader accepts: a built-in (materialized locally), a local dir, or a Hub id."""

from __future__ import annotations

import re
from pathlib import Path

from qlora_kit.errors import UsageError
from qlora_kit.model import builtin

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_name(name: str) -> str:
    """Cheap check for `validate`: returns 'builtin', 'local' or 'hub'; raises UsageError for a bad name."""
    if builtin.is_builtin(name):
        try:
            builtin.lookup(name)
        except KeyError:
            raise UsageError(f"model.name: unknown built-in model {name!r}; available: "
                             + ", ".join(f"builtin:{k}" for k in builtin.BUILTIN_MODELS)) from None
        return "builtin"
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"model.name: {name} is a file; expected a model directory with config.json")
        if not (path / "config.json").is_file():
            raise UsageError(f"model.name: {name} has no config.json; expected a Hugging Face model directory")
        return "local"
    if HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return "hub"
    raise UsageError(f"model.name: {name}: no such directory (and not a Hub id ORG/NAME or a built-in model: "
                     + ", ".join(f"builtin:{k}" for k in builtin.BUILTIN_MODELS) + ")")


def resolve_model_path(name: str) -> str:
    kind = check_model_name(name)
    if kind == "builtin":
        return str(builtin.materialize(name))
    if kind == "local":
        return str(Path(name).expanduser().resolve())
    return name
