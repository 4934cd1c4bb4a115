"""`qlora-kit data check RECIPE`: validate and measure the training data (tokenizer only, no model)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from qlora_kit.cli.common import add_recipe_args


def register(subparsers, common) -> None:
    p = subparsers.add_parser("data", parents=[common], help="inspect training data")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    c = sub.add_parser("check", parents=[common], help="format errors, token stats and a masking preview",
                       description="Check the recipe's dataset: format errors by kind (with row numbers), token "
                                   "lengths, truncation, total training tokens and which tokens are trained. "
                                   "Exits 2 where `train` would refuse the data: a row with a problem "
                                   "(unless data.on_bad_rows: skip) or no token to train; warns when some rows "
                                   "would be dropped.")
    add_recipe_args(c)
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.errors import DataError
    from qlora_kit.errors import warn
    from qlora_kit.recipe import load_recipe
    from qlora_kit.recipe.checks import check_paths

    recipe = load_recipe(args.recipe, args.overrides)
    check_paths(recipe, args.recipe)
    from qlora_kit.data.check import check, render_text

    report = check(recipe, _load_tokenizer(recipe))
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        print(render_text(report, color=sys.stdout.isatty()))
    if report.problems and recipe.data.on_bad_rows == "error":
        n = sum(e["count"] for e in report.problems.values())
        raise DataError(f"{n} row(s) with problems; training would stop at the first ({_first(report)}); fix them, "
                        "or set data.on_bad_rows: skip to drop them")
    if report.refusal:
        raise DataError(report.refusal)
    if report.nothing_to_train:
        warn(f"data.path: {report.nothing_to_train} of {report.train_rows} training rows have no trained token "
             f"(masked or truncated away at model.max_seq_length {report.max_seq_length}); training drops them")
    return 0


def _first(report) -> str:
    entry = next(iter(report.problems.values()))
    return entry["first"][0]


def _load_tokenizer(recipe):
    from transformers import AutoTokenizer

    from qlora_kit.model.check import check_model, loading
    from qlora_kit.model.resolve import resolve_model_path

    m = recipe.model
    check_model(m)  # a config transformers cannot load: one line, exit 2
    with loading(m.name):
        return AutoTokenizer.from_pretrained(resolve_model_path(m.name), trust_remote_code=m.trust_remote_code,
                                             revision=m.revision)
