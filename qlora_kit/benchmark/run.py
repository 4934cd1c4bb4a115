"""The bench stage: methods x backends x sequence lengths x batch sizes, each cell a few training steps in a process
of its own (bench/cell.py), one report (bench/report.py). Options: the recipe's `bench:` section, overridden by what
the caller gives (recipe/options.py BenchOptions)."""

from __future__ import annotations

from pathlib import Path

from qlora_kit.recipe.options import BenchOptions
from qlora_kit.recipe.schema import Recipe

DEFAULT_SEQ_LENS = (512, 1024, 2048)


def run_bench(recipe: Recipe, recipe_path: str, overrides: list[str], options: BenchOptions, *, out: str | Path,
              overwrite: bool = False, argv: list[str] | None = None) -> tuple[dict, Path]:
    """The sweep's report (what report.json holds) and its directory (qk.bench, `qlora-kit bench`). The cells
    load the recipe from `recipe_path` with `overrides`, as the caller did to get `recipe`."""
    from qlora_kit.benchmark.sweep import Sweep, check
    from qlora_kit.benchmark.sweep import run as run_sweep
    from qlora_kit.planner.shape import load_config, shape_from_config
    from qlora_kit.recipe.sizes import parse_size

    sweep = Sweep(recipe=recipe_path, overrides=list(overrides), backends=list(options.backends),
                  seq_lens=list(options.seq_lens or []), batch_sizes=list(options.batch_sizes or []),
                  steps=options.steps, warmup=options.warmup, device=options.device, data=options.data,
                  out=Path(out), overwrite=overwrite,
                  mem_limit=parse_size(options.mem_limit) if options.mem_limit else None,
                  cell_timeout=options.cell_timeout, repeats=options.repeats, argv=list(argv or []),
                  methods=list(options.methods or [recipe.train.method]))
    shape = shape_from_config(load_config(recipe.model.name, recipe.model.revision)[0])
    if not sweep.seq_lens:
        context = shape.max_positions or DEFAULT_SEQ_LENS[-1]
        sweep.seq_lens = [n for n in DEFAULT_SEQ_LENS if n <= context] or [context]
    check(sweep, recipe, shape)
    if not sweep.batch_sizes:
        from qlora_kit.training.auto import AUTO

        size = recipe.train.batch_size
        if size == "auto" and recipe.train.method == "grpo":
            size = recipe.grpo.num_generations  # as training/auto.py resolves it: one prompt's group
        sweep.batch_sizes = [AUTO["batch_size"][0 if sweep.device == "cuda" else 1] if size == "auto" else size]
    if "grpo" in sweep.methods:
        from qlora_kit.benchmark.grpo import check_grpo_cells

        check_grpo_cells(sweep, recipe)
    return run_sweep(sweep, recipe, shape), sweep.out
