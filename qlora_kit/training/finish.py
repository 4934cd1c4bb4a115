"""Training, step 3 of 3: save the adapter and the metrics, mark the run complete, then the later stages.

The stages after training (merge, export, eval, as the recipe enables them) run as `qlora-kit` child processes:
this process has imported Unsloth, which patches transformers, and merge/export must see plain transformers (the
same code path as running them by hand). Each child appends its own events to the run's log; they are forwarded
to this process's sinks and hooks as they arrive (process/child.py). Plugins are not loaded again in the child:
this process's hooks already hear its events.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from qlora_kit import __version__
from qlora_kit.errors import QKError, StageError
from qlora_kit.eventlog import emit_artifact
from qlora_kit.training.context import RunContext, peak_memory, quiet
from qlora_kit.training.fit import Fitted, stage_event
from qlora_kit.training.prepare import Prepared
from qlora_kit.training.rundir import RunDir, atomic_write_json


def finish(ctx: RunContext, prep: Prepared, fitted: Fitted) -> None:
    """Save the adapter (every rank takes part under FSDP), then rank 0 writes the metrics and marks the run
    complete."""
    from qlora_kit.distributed import sync

    run, dist = prep.run, ctx.dist
    ranks = sync.gather(fitted.memory.held) if dist.active else None  # what each rank held (a collective)
    stage_t = stage_event(run, "save_adapter")
    tmp = run.root / ".adapter.tmp"
    _save_adapter(fitted, tmp, prep.rt, dist)
    if not dist.is_main:
        return
    atomic_write_json(tmp / "qlora_kit.json", {"base_model": run.read_status().get("base_model"),
                                               "backend": prep.recipe.model.backend,
                                               "chat_template": fitted.template, "qlora_kit_version": __version__})
    run.publish_dir(tmp, run.adapter)
    stage_event(run, "save_adapter", stage_t)
    emit_artifact(run.log, "adapter", run.adapter / "adapter_model.safetensors")
    metrics = _metrics(fitted, prep, time.time() - prep.started)
    if ranks is not None:
        metrics["ranks"] = ranks
    atomic_write_json(run.metrics, metrics)
    emit_artifact(run.log, "metrics", run.metrics)
    run.write_status("complete", finished=time.time(), step=fitted.trainer.state.global_step)
    eval_loss = fitted.eval_loss
    ctx.console(f"done: {metrics['steps']} steps, loss {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}"
                + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else "")
                + f"; adapter in {run.adapter}")


def _save_adapter(fitted: Fitted, tmp: Path, rt, dist) -> None:
    """The adapter, written by rank 0. Under FSDP each rank holds a shard of it: gathering the full weights is a
    collective, so every rank takes part (rank 0 alone writes)."""
    model = fitted.model
    if rt.strategy == "fsdp":
        from qlora_kit.distributed.fsdp import full_adapter_state

        state = full_adapter_state(fitted.trainer)
        if dist.is_main:
            model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
    elif dist.is_main:
        model.save_pretrained(str(tmp), safe_serialization=True)
    if dist.is_main:
        fitted.tokenizer.save_pretrained(str(tmp))


def _metrics(fitted: Fitted, prep: Prepared, wall: float) -> dict:
    """The whole run's numbers, over every session a cancel or crash and --resume made (train/sessions.py):
    the trainer's state (steps, epochs, tokens seen) is restored from the checkpoint, but its loss and timers, and
    the callbacks, saw this session only. HF's training_loss (`result`) is used only when no step was logged."""
    from qlora_kit.training.sessions import whole_run

    state, split, rt = fitted.trainer.state, fitted.train_split, prep.rt
    tokens_seen = state.num_input_tokens_seen
    run = whole_run(fitted.events.run.events, fitted.train_seconds, wall)
    return {
        "steps": state.global_step, "epochs": round(float(state.epoch or 0), 4),
        "first_loss": run["first_loss"], "final_loss": run["final_loss"],
        "train_loss": float(fitted.result.training_loss) if run["train_loss"] is None else run["train_loss"],
        "eval_loss": fitted.eval_loss,
        "train_rows": len(split.rows), "train_tokens_per_epoch": split.tokens,
        "trained_tokens_per_epoch": split.trained_tokens,
        "tokens_seen": int(tokens_seen) if tokens_seen else None,
        "tokens_per_second": run["tokens_per_second"],
        "peak_memory_bytes": max(int(peak_memory(rt.device)), run["step_memory_bytes"]),
        "peak_memory_kind": "cuda_max_memory_allocated" if rt.device == "cuda" else "cpu_peak_rss",
        "train_seconds": round(run["train_seconds"], 3), "wall_seconds": round(run["wall_seconds"], 3),
        "device": rt.device, "dtype": rt.dtype, "method": prep.recipe.train.method,
        **_preference(fitted.events.run.events, prep.recipe.train.method),
    }


def _preference(events_path: Path, method: str) -> dict:
    """Preference runs: the last logged step's and held-out metrics (events.PreferenceMetrics), over every session."""
    if method == "sft":
        return {}
    from qlora_kit.eventlog import read_events

    last: dict[str, dict | None] = {"step": None, "eval": None}
    for event in read_events(events_path):
        if event.event in last and event.preference is not None:
            last[event.event] = event.preference.model_dump(exclude_none=True)
    return {"preference": last["step"], "eval_preference": last["eval"]}


def end_with_later_stages(ctx: RunContext, run: RunDir, recipe) -> None:
    """Run the later stages (when ctx.later_stages), then end the log: `run_end` complete, or, when a stage
    failed, its `error` and `run_end` failed. Training stays complete either way (the adapter is good)."""
    try:
        if ctx.later_stages:
            run_later_stages(ctx, run, recipe)
    except QKError as exc:
        ctx.log.report_error(exc)
        ctx.log.emit("run_end", status="failed", error=str(exc))
        raise
    ctx.log.emit("run_end", status="complete")  # last: a host sees merge and export before the run ends


def run_later_stages(ctx: RunContext, run: RunDir, recipe) -> None:
    """Merge, export and eval (as `recipe` enables them) on the run, each a child process; the first that fails
    raises (a NativeCrash by its signal's name, else a StageError), saying the command that reruns it."""
    from qlora_kit.process import Child

    for name, args in _later_stage_commands(run, recipe):
        child = Child([*args, "--no-plugins", *ctx.stage_args], ctx.log, events="log",
                      stdout=subprocess.DEVNULL if ctx.console is quiet else None)
        code = child.follow()
        if code != 0:
            _later_stage_failed(ctx, run, name, args, child)


def _later_stage_commands(run: RunDir, recipe) -> list[tuple[str, list[str]]]:
    """The commands of the stages the recipe enables: each section is its stage's options (recipe/options.py),
    written as that command's flags."""
    from qlora_kit.recipe.options import EvalOptions, ExportOptions, MergeOptions, make_options, to_argv

    stages = []
    for name, model, section, extra in (("merge", MergeOptions, recipe.merge, ["--overwrite"]),
                                        ("export", ExportOptions, recipe.export, ["--overwrite"]),
                                        ("eval", EvalOptions, recipe.eval, [])):
        if section.enabled:
            stages.append((name, [name, str(run.root), *to_argv(make_options(model, {}, base=section)), *extra]))
    return stages


def _later_stage_failed(ctx: RunContext, run: RunDir, name: str, args: list[str], child) -> None:
    code = child.returncode
    crash = child.crash("training is complete (adapter saved); ")
    if not _stage_failed_logged(run, name):
        ctx.log.emit("stage", name=name, status="failed", exit_code=code, **({"error": str(crash)} if crash else {}))
    rerun = f"Rerun it with: qlora-kit {' '.join(args)}"
    if crash:
        crash.args = (f"{crash}. {rerun}",)
        raise crash
    raise StageError(f"training is complete (adapter saved); the {name} stage failed (exit code {code}). {rerun}")


def _stage_failed_logged(run: RunDir, name: str) -> bool:
    from qlora_kit.eventlog import read_events

    stages = [e for e in read_events(run.events) if e.event == "stage" and e.name == name]
    return bool(stages) and stages[-1].status == "failed"
