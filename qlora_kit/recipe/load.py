"""Recipe loading: YAML file + `--set a.b=value` overrides -> validated `Recipe`, or every problem at once.

Every problem line names the field path, the bad value and what is allowed; unknown keys get a did-you-mean.
Nothing here imports torch or transformers: `validate` must stay fast.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from qlora_kit.errors import RecipeError, UsageError
from qlora_kit.recipe.schema import Recipe
from qlora_kit.recipe.registry import did_you_mean


DEFAULT_RUN_NAME = "run"  # for a recipe given as a dict without output.name (no file name to borrow)


def load_recipe(source: "str | Path | dict | Recipe", overrides: "list[str] | dict[str, Any] | None" = None) -> Recipe:
    """Read, override and validate a recipe. Raises RecipeError listing every problem.

    `source`: a YAML file's path, a dict (a parsed YAML document) or a Recipe. `overrides`: the CLI's `KEY=VALUE`
    strings (values parsed as YAML) or a dict of dotted keys to values, e.g. {"train.max_steps": 20}."""
    if isinstance(source, Recipe):
        label, raw, name = "recipe", source.model_dump(mode="json"), source.output.name
    elif isinstance(source, dict):
        label, raw, name = "recipe", copy.deepcopy(source), DEFAULT_RUN_NAME
    else:
        # Default run name: the recipe's file name, so `train recipes/x.yaml` writes runs/x/.
        label, raw, name = str(source), _read_yaml(Path(source)), Path(source).stem
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            _set_dotted(raw, str(key), value, f"overrides[{key!r}]")
    else:
        for item in overrides or []:
            _apply_override(raw, item)
    raw.setdefault("output", {})
    if isinstance(raw["output"], dict) and raw["output"].get("name") is None:
        raw["output"]["name"] = name
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        from qlora_kit.recipe.checks import reference_problems

        # The names the recipe gives (model, files, template) are checked too, so one pass shows every problem.
        refused = frozenset(".".join(str(p) for p in err["loc"][:2]) for err in exc.errors())
        problems = [_describe(err, raw) for err in exc.errors()] + reference_problems(raw, refused)
        raise RecipeError(label, problems) from None


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML, every default spelled out (what a run directory records)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"{path}: no such recipe file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}{where}", [f"malformed YAML: {problem}"]) from None
    except UnicodeDecodeError:
        raise RecipeError(str(path), ["not a UTF-8 text file"]) from None
    if data is None:
        raise RecipeError(str(path), ["the recipe is empty; it needs at least model.name and data.path"])
    if not isinstance(data, dict):
        raise RecipeError(str(path), [f"the top level must be a mapping of sections, not a {type(data).__name__}"])
    return data


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, value = parse_override(item)
    _set_dotted(raw, key, value, f"--set {item!r}")


def parse_override(item: str) -> tuple[str, Any]:
    """`--set train.lr=1e-4` -> ("train.lr", 0.0001): the value is parsed as YAML, so numbers, booleans and lists
    keep their types. Also how merge, export and eval read their --set (cli/options.py)."""
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set train.lr=1e-4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str) and _FLOAT.match(parsed):
        parsed = float(parsed)  # PyYAML reads YAML 1.1, where "1e-4" (no dot) is a string
    return key, parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    if not key or any(not part for part in parts):
        raise UsageError(f"{where}: expected a dotted key such as train.lr")
    _check_key(parts, where)
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"{where}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _check_key(parts: list[str], where: str) -> None:
    """An override must name a recipe field or section: `--set max_steps=10` is refused with
    "did you mean train.max_steps?" (the recipe, validated later, would only say "unknown key" at the top level)."""
    model: type[BaseModel] = Recipe
    for depth, part in enumerate(parts):
        if part not in model.model_fields:
            break
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return  # a field; anything below it is the schema's to refuse
        model = annotation
    else:
        return  # a whole section
    key = ".".join(parts)
    here = "recipe sections" if model is Recipe else f"allowed in {'.'.join(parts[:depth])}"
    raise UsageError(f"{where}: unknown key {key}{suggest_key(key, recipe_keys())}; {here}: "
                     f"{', '.join(model.model_fields)}")


def recipe_keys() -> list[str]:
    """Every field of the recipe as its dotted key (`train.max_steps`), sections in recipe order."""
    return [f"{section}.{name}" for section, info in Recipe.model_fields.items()
            for name in info.annotation.model_fields]


def suggest_key(key: str, keys: list[str]) -> str:
    """' (did you mean train.max_steps?)' for a dotted key that is not one of `keys`: the field of that name (or its
    usual synonym, or the closest name) in the key's own section if it has one, else in every section that has it
    (`trian.lr` finds train.lr by its name); '' when no name is close."""
    section, _, name = key.rpartition(".")
    names = list(dict.fromkeys(k.rpartition(".")[2] for k in keys))
    for word in (name, _SYNONYMS.get(name), *difflib.get_close_matches(name, names, n=1, cutoff=0.6)):
        owners = [k for k in keys if word and k.rpartition(".")[2] == word]
        if owners:
            return _mean([k for k in owners if k.rpartition(".")[0] == section] or owners)
    return ""


def _mean(keys: list[str]) -> str:
    if not keys:
        return ""
    return f" (did you mean {keys[0] if len(keys) == 1 else ', '.join(keys[:-1]) + ' or ' + keys[-1]}?)"


def _describe(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    field = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = _did_you_mean(loc[-1], allowed)
        return f"{field}: unknown key{hint}; allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return f"{field}: required but missing ({_description(loc)})"
    value = err.get("input")
    shown = _short(value)
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        hint = _did_you_mean(str(value), choices)
        return f"{field}: {shown} is not allowed; choose one of: {', '.join(choices)}{hint}"
    msg = err["msg"]
    msg = msg[len("Value error, "):] if msg.startswith("Value error, ") else msg
    if not loc:  # a rule across sections (e.g. export needs merge): the sections' values say nothing useful
        return msg
    return f"{field}: {shown}: {msg[0].lower() + msg[1:]}"


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the union member it tried into the location ('literal['auto']', 'int'); users never wrote those.
    return isinstance(part, str) and (part in ("int", "bool", "float", "str", "list[str]") or part.startswith(("literal[", "function-")))


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Recipe
    for part in loc:
        field = model.model_fields.get(part) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _allowed_keys(loc: list[str]) -> list[str]:
    model = _section_model(loc)
    return list(model.model_fields) if model else []


def _description(loc: list[str]) -> str:
    model = _section_model(loc[:-1])
    field = model.model_fields.get(loc[-1]) if model else None
    return (field.description or "see `qlora-kit schema`") if field else "see `qlora-kit schema`"


# Spellings users bring from transformers/TRL/peft/Unsloth configs, mapped to ours.
_SYNONYMS = {
    "learning_rate": "lr", "lora_alpha": "alpha", "lora_dropout": "dropout", "rank": "r", "use_rslora": "rslora",
    "num_train_epochs": "epochs", "num_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "optim": "optimizer", "lr_scheduler_type": "lr_scheduler",
    "max_length": "max_seq_length", "model_name": "name", "model_name_or_path": "name", "output_dir": "dir",
    "dataset": "path", "data_files": "path", "warmup": "warmup_ratio", "random_state": "seed",
}


def _did_you_mean(word: str, choices: list[str]) -> str:
    if _SYNONYMS.get(word) in choices:
        return f" (did you mean '{_SYNONYMS[word]}'?)"
    return did_you_mean(word, choices)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
