"""Trainer callbacks: step events, live progress, and cancellation at step boundaries.

Progress: a tqdm bar (step, loss, tokens/s, ETA) when stderr is a terminal; otherwise one plain line per logged
step through the run's console (stdout for the CLI), which is what CI logs and `tee` want.
Cancel: when the CancelToken is set (a signal, the API, a job) or RUN_DIR/STOP appears, the trainer saves a
checkpoint and stops after the current step; the run is marked interrupted and resume continues it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from qlora_kit.control import CancelToken
from qlora_kit.training.context import peak_memory, quiet
from qlora_kit.training.rundir import RunDir


class EventsCallback(TrainerCallback):
    def __init__(self, run: RunDir, progress: "Progress", device: str):
        self.run = run
        self.progress = progress
        self.device = device
        self._started = None  # (time, step) of the first step log, for the ETA
        self._last = None  # (time, num_tokens) at the previous step log, for tokens/s
        self.trainer = None  # set by fit: GRPO's sampled completions are read from it
        self.completions_every, self.completions_count = None, 0  # grpo.log_completions_every/_count

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_loss" in logs:
            self.run.event("eval", step=state.global_step, eval_loss=logs["eval_loss"],
                           preference=preference_metrics(logs, "eval_"), grpo=grpo_metrics(logs, "eval_"))
            self.progress.note(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
            return
        if "loss" not in logs:
            return
        now, tokens = time.time(), state.num_input_tokens_seen
        rate = None
        if self._last is not None and tokens > self._last[1] and now > self._last[0]:
            rate = (tokens - self._last[1]) / (now - self._last[0])
        self._last = (now, tokens)
        loss = float(logs["loss"])
        eta = self._eta(now, state.global_step, state.max_steps)
        self.run.event("step", step=state.global_step, max_steps=state.max_steps, loss=loss,
                       lr=logs.get("learning_rate"), grad_norm=_num(logs.get("grad_norm")),
                       tokens_per_s=rate, epoch=logs.get("epoch"), memory_bytes=int(peak_memory(self.device)),
                       eta_s=eta, preference=preference_metrics(logs), grpo=grpo_metrics(logs))
        self.progress.update(state.global_step, state.max_steps, loss, rate, eta)
        every = self.completions_every
        if every and self.trainer is not None and state.global_step % every == 0:
            from qlora_kit.training.grpo import sampled_completions

            samples = sampled_completions(self.trainer, self.completions_count)
            if samples:
                self.run.event("completions", step=state.global_step, samples=samples)

    def _eta(self, now: float, step: int, total: int) -> float | None:
        if self._started is None or step <= self._started[1]:
            self._started = self._started or (now, step)
            return None
        return round((total - step) * (now - self._started[0]) / (step - self._started[1]), 1)

    def on_save(self, args, state, control, **kwargs):
        path = self.run.checkpoints / f"checkpoint-{state.global_step}"
        self.run.event("checkpoint", step=state.global_step, path=str(path.relative_to(self.run.root)))


class CancelCallback(TrainerCallback):
    """Turns a cancel request (token, STOP file, or the distributed supervisor's request) into 'save a checkpoint
    and stop after this step'. `agree` (distributed runs) makes every rank stop at the same step when any asked."""

    def __init__(self, token: CancelToken, stop_file: Path | None, extra=None, agree=None):
        self.token = token
        self.stop_file = stop_file
        self.extra = extra  # -> a reason, or None
        self.agree = agree
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if not self.token.cancelled and self.stop_file is not None and self.stop_file.exists():
            self.token.cancel("STOP file")
            self.stop_file.unlink(missing_ok=True)
        if not self.token.cancelled and self.extra is not None:
            reason = self.extra()
            if reason:
                self.token.cancel(reason)
        stop = self.token.cancelled
        if self.agree is not None:
            stop = self.agree(stop)
            if stop and not self.token.cancelled:
                self.token.cancel("another rank")
        if stop:
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control


class RankMemory(TrainerCallback):
    """What this process held when training ended, in the planner's terms (bench.tensors.held_bytes: 4-bit weights,
    other weights, LoRA, optimizer states, buffers; local shards only under FSDP) and its peak memory. A
    distributed run records every rank's in metrics.json, which the planner's per-GPU numbers are tested against."""

    def __init__(self, device: str):
        self.device = device
        self.held: dict | None = None

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        from qlora_kit.benchmark.tensors import held_bytes

        held = held_bytes(model, optimizer) if model is not None else {}
        self.held = {"rank": args.process_index, **held, "peak_memory_bytes": int(peak_memory(self.device))}


class Progress:
    """A tqdm bar on a terminal (stderr); otherwise plain lines through `console`."""

    def __init__(self, console, tty: bool | None = None):
        self.console = console
        self.tty = (sys.stderr.isatty() if tty is None else tty) and console is not quiet
        self.bar = None

    def update(self, step: int, total: int, loss: float, rate: float | None, eta: float | None) -> None:
        rate_text = f"{rate:,.0f}" if rate else "-"
        if self.tty:
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
            self.bar.set_postfix_str(f"loss {loss:.4f}, {rate_text} tok/s", refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            eta_text = "-" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
            self.console(f"step {step}/{total}  loss {loss:.4f}  tok/s {rate_text}  eta {eta_text}")

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            self.console(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def preference_metrics(logs: dict, prefix: str = "") -> dict | None:
    """The preference methods' numbers in a trainer log, under the event's names (events.PREFERENCE_METRICS);
    None when there are none (sft)."""
    from qlora_kit.events import PREFERENCE_METRICS

    found = {ours: float(logs[prefix + theirs]) for theirs, ours in PREFERENCE_METRICS.items()
             if _num(logs.get(prefix + theirs)) is not None}
    return found or None


def grpo_metrics(logs: dict, prefix: str = "") -> dict | None:
    """GRPO's numbers in a trainer log, under the event's names (events.GRPO_METRICS; each grader's
    rewards/NAME/mean|std under graders); None when there are none (the other methods)."""
    from qlora_kit.events import GRPO_METRICS

    if prefix + "reward" not in logs:  # KTO logs a "kl" too
        return None
    found: dict = {ours: float(logs[prefix + theirs]) for theirs, ours in GRPO_METRICS.items()
                   if _num(logs.get(prefix + theirs)) is not None}
    graders: dict = {}
    for key, value in logs.items():
        parts = key[len(prefix):].split("/") if key.startswith(prefix + "rewards/") else []
        if len(parts) == 3 and parts[2] in ("mean", "std") and _num(value) is not None:
            graders.setdefault(parts[1], {})[parts[2]] = float(value)
    if graders:
        found["graders"] = graders
    return found or None


def _num(value):
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
