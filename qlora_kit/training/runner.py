"""Training: recipe -> data -> 4-bit model + LoRA -> SFTTrainer -> adapter, in a truthful run directory.

One run is one RunContext (train/context.py) passed through three steps, the shape of a torchtune recipe's
setup / train / cleanup: `prepare` (everything that can fail fast, then the run directory and `run_start`),
`fit` (model, data, training, held-out loss) and `finish` (adapter, metrics, status, then the later stages). This
module strings them together and turns a failure into the run's one error.

Everything a host needs to follow goes through the run's EventLog (events.jsonl, `--events`, hooks); human text
goes to the context's console (stdout for the CLI, nothing for the API unless asked). Cancellation is the
CancelToken, read at every step boundary; this module installs no signal handler itself, so it runs on any thread.
"""

from __future__ import annotations

from dataclasses import replace

from qlora_kit.distributed.env import current as current_dist
from qlora_kit.errors import DiskFullError, OutOfMemoryError, QKError, StageError, first_line, is_oom
from qlora_kit.training.context import RunContext
from qlora_kit.training.finish import end_with_later_stages, finish
from qlora_kit.training.fit import fit
from qlora_kit.training.prepare import prepare
from qlora_kit.training.rundir import RunDir


def train_recipe(ctx: RunContext) -> RunDir:
    """Train the context's recipe. Returns the run directory (status complete or interrupted); raises QKError on
    failure, after its `error` event.

    In a distributed run every rank calls this; rank 0 alone writes the run directory and events (the others get
    a read-only RunDir and a log that goes nowhere). Under qlora-kit's supervisor, rank 0 leaves the failure
    bookkeeping and the later stages to it (it knows every rank's outcome)."""
    ctx = replace(ctx, dist=ctx.dist or current_dist()).for_rank()
    prep = prepare(ctx)
    try:
        fitted = fit(ctx, prep)
        if fitted is not None:
            finish(ctx, prep, fitted)
    except KeyboardInterrupt:  # asked twice: stopped at once, without a checkpoint
        prep.run.write_status("interrupted")
        ctx.log.emit("run_end", status="interrupted")
        raise
    except BaseException as exc:
        error = _failed(ctx, prep.run, exc)
        if error is exc:
            raise
        raise error from exc
    if fitted is None or not ctx.dist.is_main:
        return prep.run
    if ctx.dist.supervised:  # the supervisor runs merge/export/eval once every rank has exited, then ends the log
        return prep.run
    end_with_later_stages(ctx, prep.run, prep.recipe)
    return prep.run


def _failed(ctx: RunContext, run: RunDir, exc: BaseException) -> BaseException:
    """The error to raise for `exc`, recorded in the run (by rank 0, unless a supervisor reports the run's first
    error: rank 0's own may only be the consequence of another rank's)."""
    from qlora_kit.distributed.sync import peer_cause

    error = peer_cause(ctx.dist, _as_qk_error(exc, run, ctx.source))
    if ctx.dist.is_main and not ctx.dist.supervised:
        _fail(ctx, run, error)
    elif isinstance(error, QKError):
        ctx.log.mark_reported(error)  # the supervisor (or rank 0) reports it
    return error


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


def _fail(ctx: RunContext, run: RunDir, error: BaseException) -> None:
    message = str(error) if isinstance(error, QKError) else f"{type(error).__name__}: {error}"
    try:
        run.write_status("failed", error=message)
        if isinstance(error, QKError):
            ctx.log.report_error(error)  # the API layer reports errors raised before the run dir existed
        ctx.log.emit("run_end", status="failed", error=message)
    except OSError:
        pass  # the run dir itself may be the problem; the error is reported either way
