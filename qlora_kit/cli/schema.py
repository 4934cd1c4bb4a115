"""`qlora-kit schema [--stage NAME] [--table]`: print the recipe's JSON schema, or one stage's options (field types,
defaults and descriptions; the same models the stage's flags and API keywords come from); `--table` prints them as
a Markdown table to read or paste into documentation."""

from __future__ import annotations

import json
from typing import Any

STAGES = ("merge", "export", "eval", "plan", "bench")  # recipe/options.py STAGE_OPTIONS (not imported for --help)
_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "null"}


def register(subparsers, common) -> None:
    p = subparsers.add_parser("schema", parents=[common], help="print the recipe JSON schema (or a stage's options)",
                              description="Print the JSON schema of the recipe, or of one stage's options (--stage); "
                                          "--table prints the fields as a Markdown table instead.")
    p.add_argument("--stage", choices=STAGES, help="print this stage's options instead of the whole recipe "
                   "(default: the whole recipe)")
    p.add_argument("--table", action="store_true",
                   help="a Markdown table, one row per field (key, type, default, description), instead of JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.table:
        print("\n".join(stage_table(args.stage) if args.stage else recipe_table()))
        return 0
    if args.stage:
        from qlora_kit.recipe.options import STAGE_OPTIONS

        print(json.dumps(STAGE_OPTIONS[args.stage][0].model_json_schema(), indent=2))
        return 0
    from qlora_kit.recipe.schema import Recipe

    print(json.dumps(Recipe.model_json_schema(), indent=2))
    return 0


def recipe_table() -> list[str]:
    """`| section.field | type | default | description |`, sections and fields in recipe order."""
    from qlora_kit.recipe.schema import Recipe

    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for section, info in Recipe.model_fields.items():
        lines += [f"| `{section}.{name}` | {row} |" for name, row in _rows(info.annotation)]
    return lines


def stage_table(stage: str) -> list[str]:
    """`| option | flag | type | default | description |` for one stage's options."""
    from qlora_kit.recipe.options import STAGE_OPTIONS, flag

    model = STAGE_OPTIONS[stage][0]
    lines = ["| option | flag | type | default | description |", "|---|---|---|---|---|"]
    for name, row in _rows(model):
        lines.append(f"| `{name}` | `{flag(name, model.model_fields[name].default)}` | {row} |")
    return lines


def _rows(model) -> list[tuple[str, str]]:
    """(field, "type | default | description") for each field of a pydantic model."""
    properties = model.model_json_schema()["properties"]
    rows = []
    for name, info in model.model_fields.items():
        default = "required" if info.is_required() else f"`{_yaml(info.get_default(call_default_factory=True))}`"
        text = " ".join((info.description or "").split()).replace("|", "\\|")
        rows.append((name, f"{_type(properties[name])} | {default} | {text}"))
    return rows


def _type(prop: dict[str, Any]) -> str:
    """A JSON Schema property as a short type: `int`, `auto \\| int`, `list[str]`, `unsloth \\| hf`."""
    if "enum" in prop:
        return " \\| ".join(map(str, prop["enum"]))
    if "const" in prop:
        return str(prop["const"])
    if "anyOf" in prop:
        return " \\| ".join(_type(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list[{_type(prop.get('items', {}))}]"
    return _TYPES.get(prop.get("type"), "any")


def _yaml(value: Any) -> str:
    """A default as a recipe writes it: null, true, 2GB, [q4_k_m, q8_0]."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_yaml, value)) + "]"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value) if value != "" else '""'
