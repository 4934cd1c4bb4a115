"""`qlora-kit validate RECIPE`: check a recipe without importing torch; report every problem at once."""

from __future__ import annotations

from qlora_kit.cli.common import add_recipe_args


def register(subparsers, common) -> None:
    p = subparsers.add_parser("validate", parents=[common], help="check a recipe (fast; loads no model)",
                              description="Validate a recipe and the local paths it names; print the resolved recipe.")
    add_recipe_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.recipe import dump_recipe, load_recipe
    from qlora_kit.recipe.checks import check_paths

    recipe = load_recipe(args.recipe, args.overrides)
    check_paths(recipe, args.recipe)
    if not args.quiet:
        print(f"# {args.recipe}: valid. Resolved recipe (defaults filled in):")
        print(dump_recipe(recipe), end="")
    return 0
