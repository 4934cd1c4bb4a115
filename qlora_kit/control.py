"""Cancel: one flag the training loop reads at every step boundary, whoever asks.

SIGINT / SIGTERM (the CLI), `CancelToken.cancel()` (the API, from any thread), `Job.cancel()` (a child process,
through SIGTERM) and a file named STOP in the run directory (tools that cannot signal) all set it; the loop then
saves a checkpoint, emits `cancelled` and marks the run interrupted, and `--resume` / `resume=True` continues it.
Cancellation is a flag, never an exception thrown into the middle of a step (as HF Trainer's
`control.should_training_stop`).
"""

from __future__ import annotations

import signal
import threading

STOP_FILE = "STOP"


class CancelToken:
    """Thread-safe cancel flag. `cancel()` from any thread; the run stops at its next step boundary."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def cancel(self, reason: str = "cancel token") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


class SignalCancel:
    """SIGINT/SIGTERM -> token.cancel(); the same signal again stops at once. Installed only on the main thread
    (Python allows signal handlers nowhere else); elsewhere it does nothing and the host cancels via the token."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, token: CancelToken, on_first=None, repeat_stops: bool = True):
        self.token = token
        self.on_first = on_first
        self.repeat_stops = repeat_stops  # False: a repeated signal is ignored (the launcher escalates itself)
        self._previous: dict = {}

    def __enter__(self) -> "SignalCancel":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.token.cancelled:  # asked twice: stop now, without a checkpoint
            if not self.repeat_stops:
                return
            raise KeyboardInterrupt
        self.token.cancel(name)
        if self.on_first:
            self.on_first(name)
