"""Training, step 1 of 3: everything that can fail fast, then the run directory and its `run_start`.

Order matters and is chosen so mistakes fail fast: recipe and paths (ms), run-directory state (ms), data rows
(pure Python, ~0.1 s), and only then the backend import (`import unsloth` ~15 s), the model's config check and the
resolution of the recipe's "auto" values for this device. Nothing is written before all of that passed.
"""

from __future__ import annotations

import platform
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlora_kit import __version__
from qlora_kit.control import STOP_FILE
from qlora_kit.data.prepare import load_examples
from qlora_kit.distributed.env import check_fsdp_device, topology
from qlora_kit.errors import UsageError
from qlora_kit.recipe import Recipe, dump_recipe
from qlora_kit.recipe.checks import check_paths
from qlora_kit.training.context import RunContext
from qlora_kit.training.rundir import RunDir

if TYPE_CHECKING:
    from qlora_kit.training.auto import Runtime


@dataclass
class Prepared:
    """What `prepare` found and started: the run directory, the resolved recipe and runtime, the data rows."""

    run: RunDir
    recipe: Recipe  # resolved: no "auto" left; what the run directory records
    rt: Runtime  # device-dependent choices (train/auto.py)
    backend: Any  # qlora_kit.model.backends.Backend
    train_items: list
    eval_items: list
    fmt: str  # the data format (auto-detection's answer)
    checkpoint: Path | None  # the one a resumed run continues from
    started: float  # time.time() when the run began (its wall_seconds)


def prepare(ctx: RunContext) -> Prepared:
    """Check everything, start (or continue) the run directory and emit `run_start` and the warnings so far."""
    started = time.time()
    recipe, dist = ctx.recipe, ctx.dist
    check_paths(recipe, ctx.source)
    run = _check_run_dir(ctx)
    data_notes: list[str] = []  # rows dropped by data.on_bad_rows: skip, recorded as warning events
    train_items, eval_items, fmt = load_examples(recipe.data, recipe.train.seed, data_notes, recipe.train.method)
    _check_loggers(recipe)

    from qlora_kit.model.backends import get_backend

    backend = get_backend(recipe.model.backend)
    backend.prepare(recipe.model)  # before transformers is imported anywhere (Unsloth patches it)
    from qlora_kit.model.check import check_model

    model_notes = check_model(recipe.model)  # a config transformers cannot load: one line, before the run dir
    from qlora_kit.training.auto import resolve

    resolved, rt = resolve(recipe, dist)
    check_fsdp_device(rt.strategy, rt.device)
    resolved.data.format = fmt  # record what auto-detection found
    checkpoint = run.latest_checkpoint() if ctx.resume else None
    if ctx.resume and checkpoint is None:  # a rank on another machine without the run directory
        raise UsageError(f"rank {dist.rank}: no checkpoint in {run.checkpoints} to resume from; resuming on several "
                         "machines needs output.dir on a filesystem they share (or the run directory copied)")
    prep = Prepared(run, resolved, rt, backend, train_items, eval_items, fmt, checkpoint, started)
    _start_run(ctx, prep, {"data": data_notes, "model": model_notes})
    return prep


def _check_run_dir(ctx: RunContext) -> RunDir:
    """The run directory, checked against resume/overwrite (rank 0 alone writes it)."""
    recipe, dist = ctx.recipe, ctx.dist
    run = RunDir(Path(recipe.output.dir).absolute() / recipe.output.name, writer=dist.is_main)
    if dist.is_main:
        run.check_start(ctx.resume, ctx.overwrite)
        if ctx.resume:
            run.check_world_size(dist.world_size)
    return run


def _start_run(ctx: RunContext, prep: Prepared, notes: dict[str, list[str]]) -> None:
    """Write run.json and the resolved recipe, attach the log to events.jsonl, emit run_start and warnings."""
    run, recipe, dist, log = prep.run, prep.recipe, ctx.dist, ctx.log
    run_id = (run.read_status().get("run_id") if ctx.resume else None) or uuid.uuid4().hex
    shape = topology(recipe, dist)
    run.start(dump_recipe(recipe), ctx.resume, ctx.overwrite, info={**_run_info(recipe), "run_id": run_id, **shape})
    run.log = log
    log.attach(run.events if dist.is_main else None, run_id)
    if dist.is_main:
        (run.root / STOP_FILE).unlink(missing_ok=True)  # a STOP left from the cancelled session must not stop this
    log.emit("run_start", run_dir=str(run.root), backend=recipe.model.backend, device=prep.rt.device,
             resumed_from=str(prep.checkpoint) if prep.checkpoint else None, **shape)
    for message in ctx.warnings:
        log.emit("warning", message=message, source="plugins")
    for origin, messages in notes.items():
        for message in messages:
            log.emit("warning", message=message, source=origin)


def _check_loggers(recipe: Recipe) -> None:
    from qlora_kit.training.trainer import check_loggers

    check_loggers(recipe.train.report_to)


def _run_info(recipe) -> dict:
    import torch

    info = {"qlora_kit_version": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "backend": recipe.model.backend, "device": recipe.train.device}
    for name in ("transformers", "trl", "peft", "bitsandbytes", "unsloth"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = getattr(module, "__version__", None)
    if recipe.train.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
