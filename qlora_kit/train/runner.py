"""`qlora-kit train`: recipe -> data -> 4-bit model + LoRA -> SFTTrainer -> adapter, in a truthful run directory.

Order matters and is chosen so mistakes fail fast: recipe and paths (ms), run-directory state (ms), data rows
(pure Python, ~0.1 s), and only then the backend import (`import unsloth` ~15 s) and the model load.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

from qlora_kit import __version__
from qlora_kit.data.encode import apply_chat_template_choice
from qlora_kit.data.prepare import encode_split, load_examples
from qlora_kit.errors import EXIT_INTERRUPTED, DataError, QKError, StageError
from qlora_kit.memory import peak_rss_bytes
from qlora_kit.messages import first_line
from qlora_kit.recipe import dump_recipe, load_recipe
from qlora_kit.recipe.checks import check_paths
from qlora_kit.train.rundir import RunDir, atomic_write_json


def train(recipe_path: str, overrides: list[str], resume: bool = False, overwrite: bool = False) -> int:
    t0 = time.time()
    recipe = load_recipe(recipe_path, overrides)
    check_paths(recipe, recipe_path)
    run = RunDir(Path(recipe.output.dir) / recipe.output.name)
    run.check_start(resume, overwrite)
    data_notes: list[str] = []  # rows dropped by data.on_bad_rows: skip, recorded as warning events
    train_items, eval_items, fmt = load_examples(recipe.data, recipe.train.seed, data_notes)

    from qlora_kit.model.backends import get_backend

    backend = get_backend(recipe.model.backend)
    backend.prepare(recipe.model)  # before transformers is imported anywhere (Unsloth patches it)
    from qlora_kit.model.check import check_model

    model_notes = check_model(recipe.model)  # a config transformers cannot load: one line, before the run dir
    from qlora_kit.model.resolve import resolve_model_path
    from qlora_kit.train.auto import resolve

    resolved, rt = resolve(recipe)
    resolved.data.format = fmt  # record what auto-detection found
    checkpoint = run.latest_checkpoint() if resume else None
    run.start(dump_recipe(resolved), resume, overwrite, info=_run_info(resolved))
    run.event("run_start", backend=resolved.model.backend, device=rt.device,
              resumed_from=str(checkpoint) if checkpoint else None)
    for note in data_notes + model_notes:
        run.event("warning", message=note)
    try:
        hint = " ".join(["qlora-kit train", recipe_path, *(f"--set {o}" for o in overrides), "--resume"])
        return _train(run, resolved, rt, backend, resolve_model_path, train_items, eval_items, fmt, checkpoint, t0,
                      hint)
    except KeyboardInterrupt:
        run.write_status("interrupted")
        run.event("run_end", status="interrupted")
        raise
    except QKError as exc:
        _fail(run, str(exc))
        raise
    except Exception as exc:
        _fail(run, f"{type(exc).__name__}: {exc}")
        raise StageError(f"training failed: {type(exc).__name__}: {first_line(exc)} (run dir: {run.root})") from exc


def _train(run, recipe, rt, backend, resolve_model_path, train_items, eval_items, fmt, checkpoint, t0,
           resume_hint) -> int:
    from qlora_kit.model.backends import quantization_summary
    from qlora_kit.train.callbacks import EventsCallback, InterruptCallback, Progress
    from qlora_kit.train.trainer import build_trainer

    base_path = resolve_model_path(recipe.model.name)
    run.write_status("running", base_model=base_path)
    stage_t = _stage(run, "load_model")
    model, tokenizer = backend.load(base_path, recipe.model, recipe.lora, rt)
    run.write_status("running", quantization=quantization_summary(model))
    _stage(run, "load_model", stage_t)

    stage_t = _stage(run, "prepare_data")
    template = apply_chat_template_choice(tokenizer, recipe.data.chat_template)
    max_len, d = recipe.model.max_seq_length, recipe.data
    train_split = encode_split(tokenizer, train_items, d.train_on, max_len, d.packing)
    eval_split = encode_split(tokenizer, eval_items, d.train_on, max_len, False)
    if not train_split.rows:
        raise DataError(f"data.path: no token would be trained in any of {len(train_items)} rows (all masked or "
                        "truncated away); run `qlora-kit data check` to see the masking")
    run.event("data", format=fmt, chat_template=template, train_rows=len(train_split.rows),
              eval_rows=len(eval_split.rows), truncated=train_split.truncated + eval_split.truncated,
              dropped=train_split.dropped + eval_split.dropped, train_tokens=train_split.tokens,
              trained_tokens=train_split.trained_tokens)
    _stage(run, "prepare_data", stage_t)
    print(f"data: {len(train_split.rows)} train / {len(eval_split.rows)} eval rows, {train_split.tokens:,} tokens "
          f"({train_split.trained_tokens:,} trained), {train_split.truncated} truncated to {max_len}, "
          f"{train_split.dropped} dropped (nothing to train); template: {template}", flush=True)

    progress = Progress()
    events, interrupt = EventsCallback(run, progress), InterruptCallback(progress)
    trainer = build_trainer(recipe, rt, model, tokenizer, train_split.rows, eval_split.rows,
                            str(run.checkpoints), [events, interrupt])
    stage_t = _stage(run, "train")
    interrupt.install()
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        interrupt.uninstall()
        progress.close()
    if interrupt.requested:
        run.write_status("interrupted", step=trainer.state.global_step)
        run.event("run_end", status="interrupted")
        print(f"interrupted at step {trainer.state.global_step}; checkpoint saved. Continue with: {resume_hint}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    train_seconds = _stage(run, "train", stage_t)

    eval_loss = None
    if eval_split.rows:
        eval_loss = float(trainer.evaluate()["eval_loss"])
        run.event("eval", step=trainer.state.global_step, eval_loss=eval_loss)

    stage_t = _stage(run, "save_adapter")
    tmp = run.root / ".adapter.tmp"
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    atomic_write_json(tmp / "qlora_kit.json", {"base_model": run.read_status().get("base_model"),
                                               "backend": recipe.model.backend, "chat_template": template,
                                               "qlora_kit_version": __version__})
    run.publish_dir(tmp, run.adapter)
    _stage(run, "save_adapter", stage_t)

    metrics = _metrics(events, result, trainer, train_split, eval_loss, rt, train_seconds, time.time() - t0)
    atomic_write_json(run.metrics, metrics)
    run.write_status("complete", finished=time.time(), step=trainer.state.global_step)
    run.event("run_end", status="complete")
    print(f"done: {metrics['steps']} steps, loss {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}"
          + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else "")
          + f"; adapter in {run.adapter}", flush=True)
    return run_later_stages(run, recipe)


def run_later_stages(run: RunDir, recipe) -> int:
    """Stages after training run as `qlora-kit` subprocesses: this process has imported Unsloth, which patches
    transformers, and merge/export must see plain transformers (the same code path as running them by hand)."""
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
    for name, args in stages:
        started = _stage(run, name)
        code = subprocess.call([sys.executable, "-m", "qlora_kit", *args, *(["--debug"] if "--debug" in sys.argv
                                                                          else [])])
        if code != 0:
            run.event("stage", name=name, status="failed", exit_code=code)
            print(f"training is complete (adapter saved); the {name} stage failed. Rerun it with: "
                  f"qlora-kit {' '.join(args)}", file=sys.stderr)
            return code
        _stage(run, name, started)
    return 0


def _metrics(events, result, trainer, split, eval_loss, rt, train_seconds, wall) -> dict:
    import torch

    if rt.device == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_memory_allocated"
    else:
        peak, kind = peak_rss_bytes(), "cpu_peak_rss"
    steps = trainer.state.global_step
    epochs = float(trainer.state.epoch or 0)
    tokens_seen = trainer.state.num_input_tokens_seen
    rates = events.tokens_per_s
    return {
        "steps": steps, "epochs": round(epochs, 4),
        "first_loss": events.first_loss, "final_loss": events.last_loss,
        "train_loss": float(result.training_loss), "eval_loss": eval_loss,
        "train_rows": len(split.rows), "train_tokens_per_epoch": split.tokens,
        "trained_tokens_per_epoch": split.trained_tokens,
        "tokens_seen": int(tokens_seen) if tokens_seen else None,
        "tokens_per_second": round(sum(rates) / len(rates), 1) if rates else None,
        "peak_memory_bytes": int(peak), "peak_memory_kind": kind,
        "train_seconds": round(train_seconds, 3), "wall_seconds": round(wall, 3),
        "device": rt.device, "dtype": rt.dtype,
    }


def _stage(run: RunDir, name: str, started: float | None = None) -> float:
    if started is None:
        run.event("stage", name=name, status="start")
        return time.time()
    seconds = time.time() - started
    run.event("stage", name=name, status="end", seconds=round(seconds, 3))
    return seconds


def _fail(run: RunDir, message: str) -> None:
    try:
        run.write_status("failed", error=message)
        run.event("run_end", status="failed", error=message)
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

