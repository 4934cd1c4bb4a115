"""`qlora-kit schema [--stage NAME]`: print the recipe's JSON schema, or one stage's options (field types,
defaults and descriptions; the same models the stage's flags and API keywords come from)."""

from __future__ import annotations

import json

STAGES = ("merge", "export", "eval", "plan", "bench")  # recipe/options.py STAGE_OPTIONS (not imported for --help)


def register(subparsers, common) -> None:
    p = subparsers.add_parser("schema", parents=[common], help="print the recipe JSON schema (or a stage's options)")
    p.add_argument("--stage", choices=STAGES, help="print this stage's options instead of the whole recipe")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.stage:
        from qlora_kit.recipe.options import STAGE_OPTIONS

        print(json.dumps(STAGE_OPTIONS[args.stage][0].model_json_schema(), indent=2))
        return 0
    from qlora_kit.recipe.schema import Recipe

    print(json.dumps(Recipe.model_json_schema(), indent=2))
    return 0
