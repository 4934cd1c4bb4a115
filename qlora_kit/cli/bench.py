"""`qlora-kit bench RECIPE [--backends unsloth,hf] [--methods sft,dpo] [--seq-lens ...] [--batch-sizes ...]
[--steps N] [--out DIR]`."""

from __future__ import annotations

import sys

from qlora_kit.cli.common import add_recipe_args


def register(subparsers, common) -> None:
    from qlora_kit.cli.options import add_option_flags
    from qlora_kit.recipe.options import BenchOptions

    p = subparsers.add_parser(
        "bench", parents=[common],
        help="measure tokens/s and peak memory per method, backend, sequence length and batch",
        description="Train a few steps for every method (sft, dpo, ...) x backend x sequence length x batch size, "
                    "each in a fresh process, and write OUT/report.json, report.md and PNG plots: steady-state "
                    "tokens/s, time to first step, peak memory, each backend's ratio to the hf baseline and each "
                    "preference method's to sft, final losses, and the planner's prediction next to every "
                    "measurement. Out-of-memory cells are recorded and the sweep goes on. "
                    "Every option below overrides the recipe's bench section.")
    add_recipe_args(p)
    add_option_flags(p, BenchOptions, section="bench")
    p.add_argument("--out", default="bench", help="report directory (default: ./bench)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.benchmark.run import run_bench
    from qlora_kit.cli.options import given_options
    from qlora_kit.errors import StageError
    from qlora_kit.recipe import load_recipe
    from qlora_kit.recipe.options import BenchOptions, make_options

    recipe = load_recipe(args.recipe, args.overrides)
    options = make_options(BenchOptions, given_options(args, BenchOptions), base=recipe.bench)
    report, out = run_bench(recipe, args.recipe, args.overrides, options, out=args.out, overwrite=args.overwrite,
                            argv=sys.argv[1:])
    print(f"report: {out / 'report.md'} (and report.json, {', '.join(report['plots'])})")
    ok = [c for c in report["cells"] if c["status"] in ("ok", "oom")]
    if not ok:
        raise StageError(f"every cell failed; see the logs in {out / 'cells'}")
    return 0
