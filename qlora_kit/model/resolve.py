"""Turn `model.name` into something a loader accepts: a built-in (materialized locally), a local dir, a GGUF file
(`gguf:PATH`, `*.gguf`, `pkg:PACKAGE/FILE.gguf`, `ollama:NAME[:TAG]`; dequantized once into the cache), or a Hub id."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from qlora_kit.errors import UsageError
from qlora_kit.model import builtin, gguf_source, hub
from qlora_kit.recipe.registry import did_you_mean

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FORMS = "a Hub id ORG/NAME, a GGUF (gguf:PATH, pkg:PACKAGE/FILE.gguf, ollama:NAME[:TAG]) or a built-in model: "


@dataclass
class ResolvedModel:
    path: str  # what loaders get: a local directory or a Hub id
    source: dict | None = None  # for GGUF sources: file, sha256, quant type, ... (recorded in run.json)


def check_model_name(name: str) -> str:
    """Cheap check for `validate`: returns 'builtin', 'local', 'gguf' or 'hub'; raises UsageError for a bad name."""
    if builtin.is_builtin(name):
        try:
            builtin.lookup(name)
        except KeyError:
            names = [f"builtin:{k}" for k in builtin.BUILTIN_MODELS]
            raise UsageError(f"model.name: unknown built-in model {name!r}; available: {', '.join(names)}"
                             f"{did_you_mean(name, names)}") from None
        return "builtin"
    if gguf_source.is_gguf_name(name):
        gguf_source.check(name)
        return "gguf"
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"model.name: {name} is a file; expected a model directory with config.json, or a "
                             "GGUF file (gguf:PATH)")
        if not (path / "config.json").is_file():
            raise UsageError(f"model.name: {name} has no config.json; expected a Hugging Face model directory")
        return "local"
    if HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return "hub"
    names = ", ".join(f"builtin:{k}" for k in builtin.BUILTIN_MODELS)
    if path.is_absolute():
        raise UsageError(f"model.name: {name}: no such directory (and not {FORMS}{names})")
    raise UsageError(f"model.name: {name}: no such directory (relative paths are read from the current directory, "
                     f"{Path.cwd()}), and not {FORMS}{names}")


def resolve_model(name: str) -> ResolvedModel:
    """Where the model comes from. A Hub id must be in the local cache or the Hub must answer (model/hub.py):
    otherwise one line at once, instead of the loaders' retries."""
    kind = check_model_name(name)
    if kind == "builtin":
        return ResolvedModel(str(builtin.materialize(name)))
    if kind == "local":
        return ResolvedModel(str(Path(name).expanduser().resolve()))
    if kind == "gguf":
        path, source = gguf_source.resolve(name)
        return ResolvedModel(str(path), asdict(source))
    hub.require(name, "model.name")
    return ResolvedModel(name)


def resolve_model_path(name: str) -> str:
    return resolve_model(name).path
