"""Training, step 2 of 3: load the 4-bit model with LoRA, encode the data, train, and measure the held-out loss.

Each part is a `stage` event (load_model, prepare_data, train, eval_loss). Cancellation is the CancelToken (or
RUN_DIR/STOP, or the distributed supervisor), read at every step boundary by CancelCallback: the trainer saves a
checkpoint and stops, the run is marked interrupted and `fit` returns None.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from qlora_kit.control import STOP_FILE
from qlora_kit.data.encode import apply_chat_template_choice
from qlora_kit.data.prepare import encode_splits, untrainable
from qlora_kit.errors import DataError
from qlora_kit.training.context import RunContext
from qlora_kit.training.prepare import Prepared
from qlora_kit.training.rundir import RunDir


@dataclass
class Fitted:
    """What training left for `finish`: the trained model and the numbers the metrics are made of."""

    model: Any
    tokenizer: Any
    trainer: Any
    template: str  # the chat template the data was encoded with
    train_split: Any  # qlora_kit.data.encode.Encoded
    result: Any  # what trainer.train returned
    train_seconds: float
    eval_loss: float | None
    events: Any  # callbacks.EventsCallback (the steps this session logged)
    memory: Any  # callbacks.RankMemory (what this rank held)


def fit(ctx: RunContext, prep: Prepared) -> Fitted | None:
    """Train; None when cancelled (a checkpoint was saved and the run marked interrupted)."""
    from qlora_kit.distributed import sync

    model, tokenizer = _load_model(prep)
    template, train_split, eval_split = _encode(ctx, prep, tokenizer)
    trainer, progress, events, stopper, memory = _build(ctx, prep, model, tokenizer, train_split, eval_split)
    stage_t = stage_event(prep.run, "train")
    try:
        result = trainer.train(resume_from_checkpoint=str(prep.checkpoint) if prep.checkpoint else None)
    finally:
        progress.close()
        graders = getattr(trainer, "qk_graders", None)
        if graders is not None:
            graders.close()  # python graders' worker processes
    sync.barrier()  # every rank's part of the last checkpoint (its RNG state) is on disk before rank 0 says so
    if stopper.stopped:
        _interrupted(ctx, prep.run, trainer.state.global_step)
        return None
    train_seconds = stage_event(prep.run, "train", stage_t)
    eval_loss = None
    # GRPO's held-out "loss" would sample num_generations completions of every held-out prompt (an hour for
    # SmolLM2's 100 on CPU) for a number that is ~0 by construction; `qlora-kit eval` scores those prompts with the
    # graders instead (and grpo's train.eval_steps, if set, still runs TRL's evaluation with its rewards).
    if eval_split.rows and prep.recipe.train.method != "grpo":
        stage_t = stage_event(prep.run, "eval_loss")  # the held-out loss; `eval` is the later `qlora-kit eval` stage
        eval_loss = float(trainer.evaluate()["eval_loss"])  # its log reaches EventsCallback: one `eval` event
        stage_event(prep.run, "eval_loss", stage_t)
    return Fitted(model, tokenizer, trainer, template, train_split, result, train_seconds, eval_loss, events, memory)


def _load_model(prep: Prepared):
    from qlora_kit.model.backends import quantization_summary
    from qlora_kit.model.resolve import resolve_model

    run, recipe = prep.run, prep.recipe
    base = resolve_model(recipe.model.name)
    base_path = base.path  # a GGUF base also records where it came from (file, sha256, quant type)
    run.write_status("running", base_model=base_path, **({"base_source": base.source} if base.source else {}))
    stage_t = stage_event(run, "load_model")
    model, tokenizer = prep.backend.load(base_path, recipe.model, recipe.lora, prep.rt)
    if recipe.model.adapter:
        from qlora_kit.model.start_adapter import load_adapter_weights

        load_adapter_weights(model, recipe.model.adapter)
    run.write_status("running", quantization=quantization_summary(model))
    stage_event(run, "load_model", stage_t)
    return model, tokenizer


def _encode(ctx: RunContext, prep: Prepared, tokenizer):
    """The chat template and the encoded train and eval splits; a DataError when nothing would be trained."""
    run, recipe = prep.run, prep.recipe
    stage_t = stage_event(run, "prepare_data")
    template = apply_chat_template_choice(tokenizer, recipe.data.chat_template)
    max_len = recipe.model.max_seq_length
    train_split, eval_split = encode_splits(recipe, tokenizer, prep.train_items, prep.eval_items)
    refusal = untrainable(train_split, len(prep.train_items))  # the same rule and words as `qlora-kit data check`
    if refusal:
        raise DataError(refusal)
    run.event("data", format=prep.fmt, chat_template=template, train_rows=len(train_split.rows),
              eval_rows=len(eval_split.rows), truncated=train_split.truncated + eval_split.truncated,
              dropped=train_split.dropped + eval_split.dropped, train_tokens=train_split.tokens,
              trained_tokens=train_split.trained_tokens)
    stage_event(run, "prepare_data", stage_t)
    ctx.console(f"data: {len(train_split.rows)} train / {len(eval_split.rows)} eval rows, {train_split.tokens:,} "
                f"tokens ({train_split.trained_tokens:,} trained), {train_split.truncated} truncated to {max_len}, "
                f"{train_split.dropped} dropped (nothing to train); template: {template}")
    return template, train_split, eval_split


def _build(ctx: RunContext, prep: Prepared, model, tokenizer, train_split, eval_split):
    """The trainer and its callbacks: events and progress, cancellation, what this rank held."""
    from qlora_kit.runtime.compat import load_checkpoints_on_cpu_ranks
    from qlora_kit.distributed import sync
    from qlora_kit.training.callbacks import CancelCallback, EventsCallback, Progress, RankMemory
    from qlora_kit.training.trainer import build_trainer

    dist, rt = ctx.dist, prep.rt
    if dist.active and rt.device == "cpu":
        load_checkpoints_on_cpu_ranks()
    progress = Progress(ctx.console)
    events = EventsCallback(prep.run, progress, rt.device)
    # Every rank checks its own stop requests; the ranks then agree, so all stop after the same step.
    stopper = CancelCallback(ctx.cancel, prep.run.root / STOP_FILE if dist.is_main else None,
                             extra=lambda: sync.supervisor_stop(dist), agree=sync.any_rank if dist.active else None)
    memory = RankMemory(rt.device)
    grpo = prep.recipe.train.method == "grpo"  # its trainer takes the prompt splits (their rows and their items)
    trainer = build_trainer(prep.recipe, rt, model, tokenizer, train_split if grpo else train_split.rows,
                            eval_split if grpo else eval_split.rows, str(prep.run.checkpoints),
                            [events, stopper, memory])
    events.trainer = trainer  # GRPO's sampled completions live on the trainer
    events.completions_every = prep.recipe.grpo.log_completions_every
    events.completions_count = prep.recipe.grpo.log_completions_count
    return trainer, progress, events, stopper, memory


def _interrupted(ctx: RunContext, run: RunDir, step: int) -> None:
    run.write_status("interrupted", step=step)
    saved = run.latest_checkpoint()
    run.event("cancelled", step=step, reason=ctx.cancel.reason or STOP_FILE,
              checkpoint=str(saved.relative_to(run.root)) if saved else None)
    run.event("run_end", status="interrupted")
    hint = ctx.resume_hint
    ctx.console(f"interrupted at step {step}; checkpoint saved." + (f" Continue with: {hint}" if hint else ""))


def stage_event(run: RunDir, name: str, started: float | None = None) -> float:
    """`stage` start (returns the time it started), or end with its seconds (returns them)."""
    if started is None:
        run.event("stage", name=name, status="start")
        return time.time()
    seconds = time.time() - started
    run.event("stage", name=name, status="end", seconds=round(seconds, 3))
    return seconds
