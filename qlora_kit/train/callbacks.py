"""Trainer callbacks: the events log, live progress, and a graceful Ctrl-C.

Progress: a tqdm bar (step, loss, tokens/s, ETA) when stderr is a terminal; otherwise one plain line per logged
step on stdout, which is what CI logs and `tee` want.
Ctrl-C: the first press asks the trainer to save a checkpoint and stop after the current step (the run is marked
interrupted and `--resume` continues it); a second press stops at once.
"""

from __future__ import annotations

import signal
import sys
import time

from transformers import TrainerCallback

from qlora_kit.train.rundir import RunDir


class EventsCallback(TrainerCallback):
    def __init__(self, run: RunDir, progress: "Progress"):
        self.run = run
        self.progress = progress
        self._last = None  # (time, num_tokens) at the previous step log, for tokens/s
        self.first_loss = None
        self.last_loss = None
        self.tokens_per_s = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_loss" in logs:
            self.run.event("eval", step=state.global_step, eval_loss=logs["eval_loss"])
            self.progress.note(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
            return
        if "loss" not in logs:
            return
        now, tokens = time.time(), state.num_input_tokens_seen
        rate = None
        if self._last is not None and tokens > self._last[1] and now > self._last[0]:
            rate = (tokens - self._last[1]) / (now - self._last[0])
            self.tokens_per_s.append(rate)
        self._last = (now, tokens)
        loss = float(logs["loss"])
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self.last_loss = loss
        self.run.event("step", step=state.global_step, max_steps=state.max_steps, loss=loss,
                       lr=logs.get("learning_rate"), grad_norm=_num(logs.get("grad_norm")),
                       tokens_per_s=rate, epoch=logs.get("epoch"))
        self.progress.update(state.global_step, state.max_steps, loss, rate)

    def on_save(self, args, state, control, **kwargs):
        path = self.run.checkpoints / f"checkpoint-{state.global_step}"
        self.run.event("checkpoint", step=state.global_step, path=str(path.relative_to(self.run.root)))


class InterruptCallback(TrainerCallback):
    """Turns the first SIGINT into 'save a checkpoint and stop after this step'."""

    def __init__(self, progress: "Progress"):
        self.requested = False
        self.progress = progress
        self._previous = None

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame):
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        self.progress.note("interrupt: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


class Progress:
    def __init__(self, tty: bool | None = None):
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None
        self._start = None  # (time, step) of the first update, for the plain-text ETA

    def update(self, step: int, total: int, loss: float, rate: float | None) -> None:
        rate_text = f"{rate:,.0f}" if rate else "-"
        if self.tty:
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
            self.bar.set_postfix_str(f"loss {loss:.4f}, {rate_text} tok/s", refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            print(f"step {step}/{total}  loss {loss:.4f}  tok/s {rate_text}  eta {self._eta(step, total)}", flush=True)

    def _eta(self, step: int, total: int) -> str:
        now = time.time()
        if self._start is None or step <= self._start[1]:
            self._start = self._start or (now, step)
            return "-"
        left = (total - step) * (now - self._start[0]) / (step - self._start[1])
        return time.strftime("%H:%M:%S", time.gmtime(left))

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr if self.tty else sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _num(value):
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
