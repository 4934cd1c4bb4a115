"""`qlora-kit schema`: print the recipe's JSON schema (field types, defaults and descriptions)."""

from __future__ import annotations

import json


def register(subparsers, common) -> None:
    p = subparsers.add_parser("schema", parents=[common], help="print the recipe JSON schema")
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.recipe.schema import Recipe

    print(json.dumps(Recipe.model_json_schema(), indent=2))
    return 0
