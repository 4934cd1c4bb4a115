"""Training: recipe -> data -> 4-bit model + LoRA -> SFTTrainer -> adapter, in a truthful run directory.

Order matters and is chosen so mistakes fail fast: recipe and paths (ms), run-directory state (ms), data rows
(pure Python, ~0.1 s), and only then the backend import (`import unsloth` ~15 s) and the model load.

Everything a host needs to follow goes through the run's EventLog (events.jsonl, `--events`, hooks); human text
goes to `console` (stdout for the CLI, nothing for the API unless asked). Cancellation is the CancelToken, read at
every step boundary; this module installs no signal handler itself, so it runs on any thread.
"""

from __future__ import annotations

import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from qlora_kit import __version__
from qlora_kit.control import STOP_FILE, CancelToken
from qlora_kit.data.encode import apply_chat_template_choice
from qlora_kit.data.prepare import encode_split, load_examples, untrainable
from qlora_kit.distributed.env import DistEnv, check_fsdp_device, topology
from qlora_kit.distributed.env import current as current_dist
from qlora_kit.errors import (DataError, DiskFullError, OutOfMemoryError, QKError, StageError, UsageError,
                              first_line, is_oom)
from qlora_kit.eventlog import EventLog, emit_artifact
from qlora_kit.memory import peak_rss_bytes
from qlora_kit.recipe import Recipe, dump_recipe
from qlora_kit.recipe.checks import check_paths
from qlora_kit.train.rundir import RunDir, atomic_write_json

Console = Callable[[str], None]  # one line of human output


def quiet(_text: str) -> None:
    """The API's default console: a library prints nothing unless asked."""


def train_recipe(recipe: Recipe, source: str, log: EventLog, cancel: CancelToken, *, resume: bool = False,
                 overwrite: bool = False, console: Console = quiet, resume_hint: str = "", later_stages: bool = True,
                 stage_args: tuple[str, ...] = (), warnings=(), dist: DistEnv | None = None) -> RunDir:
    """Train one recipe. Returns the run directory (status complete or interrupted); raises QKError on failure.

    In a distributed run every rank calls this; rank 0 alone writes the run directory and events (the others get
    a read-only RunDir and a log that goes nowhere). Under qlora-kit's supervisor, rank 0 leaves the failure
    bookkeeping and the later stages to it (it knows every rank's outcome)."""
    t0 = time.time()
    dist = dist or current_dist()
    if not dist.is_main:
        log, console, warnings = EventLog(), quiet, ()
    check_paths(recipe, source)
    run = RunDir(Path(recipe.output.dir).absolute() / recipe.output.name, writer=dist.is_main)
    if dist.is_main:
        run.check_start(resume, overwrite)
        if resume:
            run.check_world_size(dist.world_size)
    data_notes: list[str] = []  # rows dropped by data.on_bad_rows: skip, recorded as warning events
    train_items, eval_items, fmt = load_examples(recipe.data, recipe.train.seed, data_notes)
    _check_loggers(recipe)

    from qlora_kit.model.backends import get_backend

    backend = get_backend(recipe.model.backend)
    backend.prepare(recipe.model)  # before transformers is imported anywhere (Unsloth patches it)
    from qlora_kit.model.check import check_model

    model_notes = check_model(recipe.model)  # a config transformers cannot load: one line, before the run dir
    from qlora_kit.train.auto import resolve

    resolved, rt = resolve(recipe, dist)
    check_fsdp_device(rt.strategy, rt.device)
    resolved.data.format = fmt  # record what auto-detection found
    checkpoint = run.latest_checkpoint() if resume else None
    if resume and checkpoint is None:  # a rank on another machine without the run directory
        raise UsageError(f"rank {dist.rank}: no checkpoint in {run.checkpoints} to resume from; resuming on several "
                         "machines needs output.dir on a filesystem they share (or the run directory copied)")
    run_id = (run.read_status().get("run_id") if resume else None) or uuid.uuid4().hex
    shape = topology(resolved, dist)
    run.start(dump_recipe(resolved), resume, overwrite, info={**_run_info(resolved), "run_id": run_id, **shape})
    run.log = log
    log.attach(run.events if dist.is_main else None, run_id)
    if dist.is_main:
        (run.root / STOP_FILE).unlink(missing_ok=True)  # a STOP left from the cancelled session must not stop this
    log.emit("run_start", run_dir=str(run.root), backend=resolved.model.backend, device=rt.device,
             resumed_from=str(checkpoint) if checkpoint else None, **shape)
    for message in warnings:
        log.emit("warning", message=message, source="plugins")
    for origin, notes in (("data", data_notes), ("model", model_notes)):
        for message in notes:
            log.emit("warning", message=message, source=origin)
    try:
        done = _train(run, resolved, rt, backend, train_items, eval_items, fmt, checkpoint, t0, cancel, console,
                      resume_hint, dist)
    except KeyboardInterrupt:  # asked twice: stopped at once, without a checkpoint
        run.write_status("interrupted")
        log.emit("run_end", status="interrupted")
        raise
    except BaseException as exc:
        error = _failed(exc, run, log, source, dist)
        if error is exc:
            raise
        raise error from exc
    if not done or not dist.is_main:
        return run
    if dist.supervised:  # the supervisor runs merge/export/eval once every rank has exited, then ends the log
        return run
    if later_stages:
        try:
            run_later_stages(run, resolved, log, console, stage_args)
        except QKError as exc:  # training stays complete (the adapter is good); the pipeline failed
            log.emit("error", kind=exc.kind, message=str(exc), exit_code=exc.exit_code)
            log.emit("run_end", status="failed", error=str(exc))
            exc.reported = True
            raise
    log.emit("run_end", status="complete")  # last: a host sees merge and export before the run ends
    return run


def _failed(exc: BaseException, run: RunDir, log: EventLog, source: str, dist: DistEnv) -> BaseException:
    """The error to raise for `exc`, recorded in the run (by rank 0, unless a supervisor reports the run's first
    error: rank 0's own may only be the consequence of another rank's)."""
    from qlora_kit.distributed.sync import peer_cause

    error = peer_cause(dist, _as_qk_error(exc, run, source))
    if dist.is_main and not dist.supervised:
        _fail(run, log, error)
    elif isinstance(error, QKError):
        error.reported = True
    return error


def _check_loggers(recipe: Recipe) -> None:
    from qlora_kit.train.trainer import check_loggers

    check_loggers(recipe.train.report_to)


def _as_qk_error(exc: BaseException, run: RunDir, source: str) -> BaseException:
    if isinstance(exc, QKError) or not isinstance(exc, Exception):
        return exc
    text = f"{type(exc).__name__}: {first_line(exc)}"
    if is_oom(exc):
        return OutOfMemoryError(f"out of memory while training ({text}); `qlora-kit plan {source}` estimates what "
                                "fits: lower train.batch_size or model.max_seq_length, or turn on "
                                f"train.gradient_checkpointing (run dir: {run.root})")
    if isinstance(exc, OSError) and exc.errno == 28:
        return DiskFullError(f"disk full while training ({text}); free space and resume (run dir: {run.root})")
    return StageError(f"training failed: {text} (run dir: {run.root})")


def _train(run, recipe, rt, backend, train_items, eval_items, fmt, checkpoint, t0, cancel, console,
           resume_hint, dist) -> bool:
    """True when training completed; False when it was cancelled (a checkpoint was saved)."""
    from qlora_kit.compat import load_checkpoints_on_cpu_ranks
    from qlora_kit.distributed import sync
    from qlora_kit.model.backends import quantization_summary
    from qlora_kit.model.resolve import resolve_model
    from qlora_kit.train.callbacks import CancelCallback, EventsCallback, Progress, RankMemory
    from qlora_kit.train.trainer import build_trainer

    base = resolve_model(recipe.model.name)
    base_path = base.path  # a GGUF base also records where it came from (file, sha256, quant type)
    run.write_status("running", base_model=base_path, **({"base_source": base.source} if base.source else {}))
    stage_t = _stage(run, "load_model")
    model, tokenizer = backend.load(base_path, recipe.model, recipe.lora, rt)
    run.write_status("running", quantization=quantization_summary(model))
    _stage(run, "load_model", stage_t)

    stage_t = _stage(run, "prepare_data")
    template = apply_chat_template_choice(tokenizer, recipe.data.chat_template)
    max_len, d = recipe.model.max_seq_length, recipe.data
    train_split = encode_split(tokenizer, train_items, d.train_on, max_len, d.packing)
    eval_split = encode_split(tokenizer, eval_items, d.train_on, max_len, False)
    refusal = untrainable(train_split, len(train_items))  # the same rule and words as `qlora-kit data check`
    if refusal:
        raise DataError(refusal)
    run.event("data", format=fmt, chat_template=template, train_rows=len(train_split.rows),
              eval_rows=len(eval_split.rows), truncated=train_split.truncated + eval_split.truncated,
              dropped=train_split.dropped + eval_split.dropped, train_tokens=train_split.tokens,
              trained_tokens=train_split.trained_tokens)
    _stage(run, "prepare_data", stage_t)
    console(f"data: {len(train_split.rows)} train / {len(eval_split.rows)} eval rows, {train_split.tokens:,} tokens "
            f"({train_split.trained_tokens:,} trained), {train_split.truncated} truncated to {max_len}, "
            f"{train_split.dropped} dropped (nothing to train); template: {template}")

    if dist.active and rt.device == "cpu":
        load_checkpoints_on_cpu_ranks()
    progress = Progress(console)
    events = EventsCallback(run, progress, rt.device)
    # Every rank checks its own stop requests; the ranks then agree, so all stop after the same step.
    stopper = CancelCallback(cancel, run.root / STOP_FILE if dist.is_main else None,
                             extra=lambda: sync.supervisor_stop(dist), agree=sync.any_rank if dist.active else None)
    memory = RankMemory(rt.device)
    trainer = build_trainer(recipe, rt, model, tokenizer, train_split.rows, eval_split.rows,
                            str(run.checkpoints), [events, stopper, memory])
    stage_t = _stage(run, "train")
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        progress.close()
    sync.barrier()  # every rank's part of the last checkpoint (its RNG state) is on disk before rank 0 says so
    if stopper.stopped:
        _interrupted(run, trainer.state.global_step, cancel, console, resume_hint)
        return False
    train_seconds = _stage(run, "train", stage_t)

    eval_loss = None
    if eval_split.rows:
        stage_t = _stage(run, "eval_loss")  # the held-out loss; `eval` is the later `qlora-kit eval` stage
        eval_loss = float(trainer.evaluate()["eval_loss"])  # its log reaches EventsCallback: one `eval` event
        _stage(run, "eval_loss", stage_t)

    ranks = sync.gather(memory.held) if dist.active else None  # what each rank held (a collective)
    stage_t = _stage(run, "save_adapter")
    tmp = run.root / ".adapter.tmp"
    _save_adapter(trainer, model, tokenizer, tmp, rt, dist)
    if not dist.is_main:
        return True
    atomic_write_json(tmp / "qlora_kit.json", {"base_model": run.read_status().get("base_model"),
                                               "backend": recipe.model.backend, "chat_template": template,
                                               "qlora_kit_version": __version__})
    run.publish_dir(tmp, run.adapter)
    _stage(run, "save_adapter", stage_t)
    emit_artifact(run.log, "adapter", run.adapter / "adapter_model.safetensors")

    metrics = _metrics(events, result, trainer, train_split, eval_loss, rt, train_seconds, time.time() - t0)
    if ranks is not None:
        metrics["ranks"] = ranks
    atomic_write_json(run.metrics, metrics)
    emit_artifact(run.log, "metrics", run.metrics)
    run.write_status("complete", finished=time.time(), step=trainer.state.global_step)
    console(f"done: {metrics['steps']} steps, loss {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}"
            + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else "")
            + f"; adapter in {run.adapter}")
    return True


def _interrupted(run: RunDir, step: int, cancel: CancelToken, console: Console, resume_hint: str) -> None:
    run.write_status("interrupted", step=step)
    saved = run.latest_checkpoint()
    run.event("cancelled", step=step, reason=cancel.reason or STOP_FILE,
              checkpoint=str(saved.relative_to(run.root)) if saved else None)
    run.event("run_end", status="interrupted")
    console(f"interrupted at step {step}; checkpoint saved." + (f" Continue with: {resume_hint}" if resume_hint else ""))


def _save_adapter(trainer, model, tokenizer, tmp: Path, rt, dist) -> None:
    """The adapter, written by rank 0. Under FSDP each rank holds a shard of it: gathering the full weights is a
    collective, so every rank takes part (rank 0 alone writes)."""
    if rt.strategy == "fsdp":
        from qlora_kit.distributed.fsdp import full_adapter_state

        state = full_adapter_state(trainer)
        if dist.is_main:
            model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
    elif dist.is_main:
        model.save_pretrained(str(tmp), safe_serialization=True)
    if dist.is_main:
        tokenizer.save_pretrained(str(tmp))


def run_later_stages(run: RunDir, recipe, log: EventLog, console: Console, extra_args: tuple[str, ...] = ()) -> None:
    """Stages after training run as `qlora-kit` subprocesses: this process has imported Unsloth, which patches
    transformers, and merge/export must see plain transformers (the same code path as running them by hand).
    Each child appends its own events to the run's log; they are forwarded to this process's sinks and hooks as
    they arrive. Plugins are not loaded again in the child: this process's hooks already hear its events."""
    import subprocess

    stages = []
    if recipe.merge.enabled:
        m = recipe.merge
        stages.append(("merge", ["merge", str(run.root), "--base", m.base, "--dtype", m.dtype, "--max-shard-size",
                                 m.max_shard_size, "--samples", str(m.samples), "--overwrite"]
                       + ([] if m.verify else ["--no-verify"])))
    if recipe.export.enabled:
        e = recipe.export
        stages.append(("export", ["export", str(run.root), "--quant", ",".join(e.quant), "--samples", str(e.samples),
                                  "--overwrite"] + ([] if e.verify else ["--no-verify"])))
    if recipe.eval.enabled:
        v = recipe.eval
        stages.append(("eval", ["eval", str(run.root), "--max-new-tokens", str(v.max_new_tokens), "--fewshot",
                                str(v.fewshot)] + (["--systems", ",".join(v.systems)] if v.systems else [])
                       + (["--samples", str(v.samples)] if v.samples else []) + (["--data", v.data] if v.data else [])
                       + (["--scorer", v.scorer] if v.scorer else [])))
    from qlora_kit.native.crash import crash_error, died_by_signal, watched_child_env

    quiet_child = console is quiet
    for name, args in stages:
        cmd = [sys.executable, "-m", "qlora_kit", *args, "--no-plugins", *extra_args]
        with watched_child_env() as (env, noted):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if quiet_child else None, env=env)
            while proc.poll() is None:
                time.sleep(0.2)
                log.forward_appended()
            log.forward_appended()
            crash = died_by_signal(proc.returncode) and crash_error(
                name, proc.returncode, noted(), "training is complete (adapter saved); ")
        if proc.returncode != 0:
            if not _stage_failed_logged(run, name):
                log.emit("stage", name=name, status="failed", exit_code=proc.returncode,
                         **({"error": str(crash)} if crash else {}))
            rerun = f"Rerun it with: qlora-kit {' '.join(args)}"
            if crash:
                crash.args = (f"{crash}. {rerun}",)
                raise crash
            raise StageError(f"training is complete (adapter saved); the {name} stage failed (exit code "
                             f"{proc.returncode}). {rerun}")


def _stage_failed_logged(run: RunDir, name: str) -> bool:
    from qlora_kit.eventlog import read_events

    stages = [e for e in read_events(run.events) if e.event == "stage" and e.name == name]
    return bool(stages) and stages[-1].status == "failed"


def _metrics(events, result, trainer, split, eval_loss, rt, train_seconds, wall) -> dict:
    """The whole run's numbers, over every session a cancel or crash and --resume made (train/sessions.py):
    the trainer's state (steps, epochs, tokens seen) is restored from the checkpoint, but its loss and timers, and
    the callbacks, saw this session only. HF's training_loss (`result`) is used only when no step was logged."""
    from qlora_kit.train.sessions import whole_run

    steps = trainer.state.global_step
    epochs = float(trainer.state.epoch or 0)
    tokens_seen = trainer.state.num_input_tokens_seen
    run = whole_run(events.run.events, train_seconds, wall)
    return {
        "steps": steps, "epochs": round(epochs, 4),
        "first_loss": run["first_loss"], "final_loss": run["final_loss"],
        "train_loss": float(result.training_loss) if run["train_loss"] is None else run["train_loss"],
        "eval_loss": eval_loss,
        "train_rows": len(split.rows), "train_tokens_per_epoch": split.tokens,
        "trained_tokens_per_epoch": split.trained_tokens,
        "tokens_seen": int(tokens_seen) if tokens_seen else None,
        "tokens_per_second": run["tokens_per_second"],
        "peak_memory_bytes": max(int(peak_memory(rt.device)), run["step_memory_bytes"]),
        "peak_memory_kind": "cuda_max_memory_allocated" if rt.device == "cuda" else "cpu_peak_rss",
        "train_seconds": round(run["train_seconds"], 3), "wall_seconds": round(run["wall_seconds"], 3),
        "device": rt.device, "dtype": rt.dtype,
    }


def peak_memory(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    return peak_rss_bytes()


def _stage(run: RunDir, name: str, started: float | None = None) -> float:
    if started is None:
        run.event("stage", name=name, status="start")
        return time.time()
    seconds = time.time() - started
    run.event("stage", name=name, status="end", seconds=round(seconds, 3))
    return seconds


def _fail(run: RunDir, log: EventLog, error: BaseException) -> None:
    message = str(error) if isinstance(error, QKError) else f"{type(error).__name__}: {error}"
    try:
        run.write_status("failed", error=message)
        if isinstance(error, QKError):
            log.emit("error", kind=error.kind, message=message, exit_code=error.exit_code)
            error.reported = True  # the API layer emits errors raised before the run dir existed
        log.emit("run_end", status="failed", error=message)
    except OSError:
        pass  # the run dir itself may be the problem; the error is reported either way


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
