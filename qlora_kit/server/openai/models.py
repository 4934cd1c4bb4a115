"""The model table: which names a client may ask for, and what each trains from.

A YAML mapping (`qlora-kit server --models FILE`), alias -> one of
    {recipe: PATH}            a recipe (relative paths are taken from the table's directory) whose model, LoRA and
                              train settings a job starts from, e.g. `gpt-4o-mini-2024-07-18: {recipe: recipes/x.yaml}`
                              for code that hard-codes OpenAI's names
    {base: MODEL}             a model name as `model.name` takes it (`builtin:tiny-llama`, a Hub id, a local
                              directory under the root) with the recipe defaults
and optionally `gguf: PATH` on either, a GGUF file /v1/chat/completions answers the base from.
Without --models the table holds each `builtin:` model by its name and each shipped recipe (recipes/*.yaml) by its
file stem. The table is the operator's, read once at start-up: its paths are trusted; clients only name aliases.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from qlora_kit.errors import UsageError
from qlora_kit.server.openai.errors import OpenAIError

SHIPPED_RECIPES = Path(__file__).resolve().parents[3] / "recipes"


class ModelTable:
    def __init__(self, path: Path | None = None):
        self.created = int(time.time())
        if path is None:
            self.source, self.entries = "the default model table (--models FILE replaces it)", _default()
        else:
            self.source, self.entries = f"the model table {path}", _load(Path(path))

    def resolve(self, alias: object, param: str = "model") -> dict:
        entry = self.entries.get(alias) if isinstance(alias, str) else None
        if entry is None:
            names = ", ".join(sorted(self.entries)) or "none"
            raise OpenAIError(404, f"The model {alias!r} is not in {self.source}; models: {names}", param,
                              "model_not_found")
        return entry

    def base_recipe(self, alias: str) -> dict:
        """The recipe a job for `alias` starts from, as a plain dict (before the API's fields are mapped on)."""
        from qlora_kit.recipe.load import _read_yaml

        entry = self.resolve(alias)
        if "recipe" in entry:
            return _read_yaml(Path(entry["recipe"]))
        return {"model": {"name": entry["base"]}}

    def objects(self) -> list[dict]:
        return [{"id": alias, "object": "model", "created": self.created, "owned_by": "qlora-kit"}
                for alias in sorted(self.entries)]


def _default() -> dict[str, dict]:
    from qlora_kit.model.builtin import BUILTIN_MODELS, PREFIX

    table = {f"{PREFIX}{name}": {"base": f"{PREFIX}{name}"} for name in BUILTIN_MODELS}
    if SHIPPED_RECIPES.is_dir():
        table.update({p.stem: {"recipe": str(p)} for p in sorted(SHIPPED_RECIPES.glob("*.yaml"))})
    return table


def _load(path: Path) -> dict[str, dict]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--models {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f"--models {path}: must be a mapping of model aliases, e.g. "
                         "`gpt-4o-mini-2024-07-18: {recipe: recipes/tiny-demo.yaml}`")
    table, problems = {}, []
    for alias, entry in raw.items():
        kinds = [k for k in ("recipe", "base") if isinstance(entry, dict) and isinstance(entry.get(k), str)]
        extra = sorted(set(entry) - {"recipe", "base", "gguf"}) if isinstance(entry, dict) else []
        if len(kinds) != 1 or extra:
            problems.append(f"{alias}: give exactly one of `recipe: PATH` or `base: MODEL` (and optionally "
                            f"`gguf: PATH`){'; unknown key(s) ' + ', '.join(extra) if extra else ''}")
            continue
        entry = dict(entry)
        for key in ("recipe", "gguf"):
            if key in entry:
                entry[key] = str((path.parent / entry[key]).resolve())
                if not Path(entry[key]).is_file():
                    problems.append(f"{alias}: {key}: {entry[key]}: no such file")
        table[str(alias)] = entry
    if problems:
        raise UsageError(f"--models {path}: " + "; ".join(problems))
    return table
