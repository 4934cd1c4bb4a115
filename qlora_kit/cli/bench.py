"""`qlora-kit bench RECIPE [--backends unsloth,hf] [--seq-lens ...] [--batch-sizes ...] [--steps N] [--out DIR]`."""

from __future__ import annotations

import sys

from qlora_kit.cli import add_recipe_args

DEFAULT_SEQ_LENS = (512, 1024, 2048)


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "bench", parents=[common], help="measure tokens/s and peak memory per backend, sequence length and batch",
        description="Train a few steps for every backend x sequence length x batch size, each in a fresh process, "
                    "and write OUT/report.json, report.md and PNG plots: steady-state tokens/s, time to first "
                    "step, peak memory, each backend's ratio to the hf baseline, final losses, and the planner's "
                    "prediction next to every measurement. Out-of-memory cells are recorded and the sweep goes on.")
    add_recipe_args(p)
    p.add_argument("--backends", default=None, help="comma-separated (default: bench.backends: unsloth,hf)")
    p.add_argument("--seq-lens", default=None,
                   help="comma-separated token counts (default: bench.seq_lens, or 512,1024,2048 within the "
                        "model's context)")
    p.add_argument("--batch-sizes", default=None,
                   help="comma-separated (default: bench.batch_sizes, or train.batch_size; auto: 2 on GPU, 4 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per cell (default: bench.steps: 10)")
    p.add_argument("--warmup", type=int, default=None,
                   help="first steps excluded from tokens/s (default: bench.warmup: 3)")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per cell, backends interleaved; the report keeps the median run by tokens/s and "
                        "every run's numbers (default: bench.repeats: 1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="default: the recipe's train.device")
    p.add_argument("--data", choices=("synthetic", "recipe"), default=None,
                   help="synthetic: seeded random tokens (no data needed); recipe: the recipe's data cut into "
                        "blocks of exactly each length (default: bench.data: synthetic)")
    p.add_argument("--mem-limit", default=None, metavar="SIZE",
                   help="cap each cell's memory, e.g. 8GiB, to see what a smaller machine could run (CUDA: a share "
                        "of the GPU; CPU: the process's data segment limit)")
    p.add_argument("--cell-timeout", type=int, default=1800, help="seconds before a cell is stopped (default: 1800)")
    p.add_argument("--out", default="bench", help="report directory (default: ./bench)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.errors import StageError

    report, out = run_bench(args)
    print(f"report: {out / 'report.md'} (and report.json, {', '.join(report['plots'])})")
    ok = [c for c in report["cells"] if c["status"] in ("ok", "oom")]
    if not ok:
        raise StageError(f"every cell failed; see the logs in {out / 'cells'}")
    return 0


def run_bench(args):
    """The sweep's report (what report.json holds) and its directory; `qk.bench` returns the same, typed."""
    from pathlib import Path

    from qlora_kit.bench.sweep import Sweep, check, parse_int_list
    from qlora_kit.bench.sweep import run as run_sweep
    from qlora_kit.errors import UsageError
    from qlora_kit.plan.shape import load_config, shape_from_config
    from qlora_kit.recipe import load_recipe
    from qlora_kit.sizes import parse_size

    recipe = load_recipe(args.recipe, args.overrides)
    b = recipe.bench
    steps = b.steps if args.steps is None else args.steps
    repeats = b.repeats if args.repeats is None else args.repeats
    warmup = b.warmup if args.warmup is None else args.warmup
    for flag, value, least in (("--steps", steps, 1), ("--repeats", repeats, 1), ("--warmup", warmup, 0),
                               ("--cell-timeout", args.cell_timeout, 1)):
        if value < least:
            raise UsageError(f"{flag}: {value} must be at least {least}")
    try:
        mem_limit = parse_size(args.mem_limit) if args.mem_limit else None
    except ValueError as exc:
        raise UsageError(f"--mem-limit: {exc}") from None
    sweep = Sweep(recipe=args.recipe, overrides=list(args.overrides),
                  backends=[x.strip() for x in args.backends.split(",") if x.strip()] if args.backends
                  else list(b.backends),
                  seq_lens=parse_int_list(args.seq_lens, "--seq-lens") if args.seq_lens else list(b.seq_lens or []),
                  batch_sizes=parse_int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes
                  else list(b.batch_sizes or []),
                  steps=steps, warmup=warmup, device=args.device,
                  data=args.data or b.data, out=Path(args.out), overwrite=args.overwrite, mem_limit=mem_limit,
                  cell_timeout=args.cell_timeout, repeats=repeats, argv=sys.argv[1:])
    shape = shape_from_config(load_config(recipe.model.name, recipe.model.revision)[0])
    if not sweep.seq_lens:
        context = shape.max_positions or DEFAULT_SEQ_LENS[-1]
        sweep.seq_lens = [n for n in DEFAULT_SEQ_LENS if n <= context] or [context]
    check(sweep, recipe, shape)
    if not sweep.batch_sizes:
        from qlora_kit.train.auto import AUTO

        size = recipe.train.batch_size
        sweep.batch_sizes = [AUTO["batch_size"][0 if sweep.device == "cuda" else 1] if size == "auto" else size]
    return run_sweep(sweep, recipe, shape), sweep.out
