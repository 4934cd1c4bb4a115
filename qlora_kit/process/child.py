"""The one launcher for child processes: `python -m qlora_kit COMMAND ...` (or another module, e.g. torchrun).

A child is started for three reasons: a stage that must not share this process (Unsloth patched transformers
here; llama.cpp may crash), a training run the host follows without importing torch (`qk.start`, the job server),
and torchrun under the distributed supervisor. Whatever the reason, the same things happen here:

- events reach the parent's EventLog one of three ways (`events`): "file", the child writes `--events FILE` (a
  scratch file), forwarded as they were numbered there once it exits; "stdout", the child writes `--events -` and
  its stdout carries only event lines, forwarded live by a reader thread; "log", the child appends to the
  events.jsonl the parent's log is attached to (a run directory's), forwarded as they arrive by `follow`.
  None: no events (a dry-run command whose stdout is its report);
- a child that dies by a signal is reported by the signal's name (native/crash.py): it gets a crash-note file in
  its environment, and `crash()` is the NativeCrash (exit code 128 + the signal) naming what it was doing;
- any other failure maps to the project's typed error (`error()`): the kind and message of the child's last
  `error` event, else a StageError naming the command and its exit code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from qlora_kit.errors import NativeCrash, QKError, StageError, error_for_kind
from qlora_kit.events import BaseEvent, parse_event
from qlora_kit.eventlog import EventLog
from qlora_kit.native.crash import crash_error, died_by_signal, watched_child_env

EventsFrom = Literal["file", "stdout", "log"] | None


class Child:
    """`python -m MODULE *argv` as a child process, started at once; its events forwarded into `log`.

    `events` says how they come (module docstring); "file" and "stdout" add the `--events` flag to `argv` and
    collect the events in `self.events` too. `watch_crash` gives the child a crash note (crash() then names its
    signal). `env` is added to this process's environment; `sinks=False` forwards to the log's hooks alone;
    `on_end` is called when a "stdout" child's stream ends; other keywords go to subprocess.Popen (stdin, stdout,
    stderr, cwd, start_new_session, ...)."""

    def __init__(self, argv: Sequence[str], log: EventLog | None = None, *, events: EventsFrom = None,
                 module: str = "qlora_kit", watch_crash: bool = True, env: dict[str, str] | None = None,
                 sinks: bool = True, on_end: Callable[[], None] | None = None, **popen: Any):
        self.argv = [str(a) for a in argv]
        self.command = self.argv[0] if module == "qlora_kit" and self.argv else module
        self.log, self.mode, self.sinks, self._on_end = log, events, sinks, on_end
        self.events: list[BaseEvent] = []
        self.noted: dict = {}  # what the child noted before it died by a signal (native/crash.py)
        self._cleanup = contextlib.ExitStack()
        self._note: Callable[[], dict] | None = None
        self._events_file: Path | None = None
        self._reader: threading.Thread | None = None
        self._finished = False
        try:
            self.proc = self._start(module, env, watch_crash, popen)
        except BaseException:
            self._cleanup.close()
            raise
        self.pid = self.proc.pid
        if events == "stdout":
            self._reader = threading.Thread(target=self._read_stdout, name=f"qlora-kit-child-{self.pid}",
                                            daemon=True)
            self._reader.start()

    def _start(self, module: str, env: dict[str, str] | None, watch_crash: bool, popen: dict) -> subprocess.Popen:
        child_env = {**os.environ, **(env or {})}
        if watch_crash:
            watched, self._note = self._cleanup.enter_context(watched_child_env())
            child_env = {**watched, **(env or {})}
        flags: list[str] = []
        if self.mode == "file":
            tmp = self._cleanup.enter_context(tempfile.TemporaryDirectory(prefix="qlora-kit-stage-"))
            self._events_file = Path(tmp) / "events.jsonl"
            flags = ["--events", str(self._events_file)]
        elif self.mode == "stdout":
            flags = ["--events", "-"]
            popen = {**popen, "stdout": subprocess.PIPE, "text": True, "bufsize": 1}
        cmd = [sys.executable, "-m", module, *self.argv, *flags]
        return subprocess.Popen(cmd, env=child_env, **popen)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def follow(self, tick: Callable[[], None] | None = None, every: float = 0.2) -> int:
        """Wait for the child, forwarding a "log" child's events as they arrive and calling `tick` every `every`
        seconds meanwhile; returns its exit code (see wait)."""
        try:
            while self.proc.poll() is None:
                time.sleep(every)
                if self.mode == "log" and self.log is not None:
                    self.log.forward_appended()
                if tick is not None:
                    tick()
        except BaseException:
            self._cleanup.close()
            raise
        return self.wait()

    def wait(self, timeout: float | None = None) -> int:
        """The exit code, once every event has been forwarded (subprocess.TimeoutExpired on timeout; the child
        then still runs, and a later wait finishes it)."""
        code = self.proc.wait(timeout)
        self._finish()
        return code

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Its whole output (stdout and stderr given as subprocess.PIPE), as subprocess.run reads it: on a timeout
        (or an interruption) the child is killed and the exception raised."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except BaseException:
            self.proc.kill()
            self.proc.communicate()
            raise
        finally:
            if self.proc.returncode is not None:
                self._finish()
        return out, err

    def terminate(self) -> None:
        """SIGTERM, if it still runs (a training child checkpoints at the next step boundary and stops)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and reap it, forwarding nothing more (an interrupted parent leaves no child behind)."""
        self.proc.kill()
        self.proc.wait()
        self._finished = True
        self._cleanup.close()

    def cancel_on(self, token) -> None:
        """Terminate the child when the CancelToken is set (watched from a thread while the child runs)."""

        def watch() -> None:
            while self.proc.poll() is None:
                if token.wait(0.2):
                    self.terminate()
                    return

        threading.Thread(target=watch, daemon=True).start()

    def crash(self, prefix: str = "") -> NativeCrash | None:
        """The NativeCrash for a watched child that died by a signal (after wait), else None."""
        code = self.proc.returncode
        if self._note is None or not died_by_signal(code):
            return None
        return crash_error(self.command, code, self.noted, prefix)

    def error(self, fallback: Callable[[int], str] | None = None) -> QKError | None:
        """The typed error for how the child ended (after wait; None for exit code 0): its crash by signal name;
        else the kind and message of its last `error` event; else a StageError saying `fallback(code)`, by default
        "qlora-kit COMMAND exited with code N"."""
        code = self.proc.returncode
        if code == 0:
            return None
        crash = self.crash()
        if crash is not None:
            return crash
        errors = [e for e in self.events if e.event == "error"]
        if errors:
            return error_for_kind(errors[-1].kind, errors[-1].message)
        return StageError(fallback(code) if fallback else f"qlora-kit {self.command} exited with code {code}")

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            if self._reader is not None:
                self._reader.join()
            if self.mode == "log" and self.log is not None:
                self.log.forward_appended()
            if self._events_file is not None and self._events_file.is_file():
                text = self._events_file.read_text()
                for event in [parse_event(line) for line in text.splitlines() if line.strip()]:
                    self._forward(event)
            if self._note is not None and died_by_signal(self.proc.returncode):
                self.noted = self._note()
        finally:
            self._cleanup.close()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                event = parse_event(line)
            except ValueError:
                continue  # not an event line (nothing else should reach stdout, but never crash the parent)
            self._forward(event)
        if self._on_end is not None:
            self._on_end()

    def _forward(self, event: BaseEvent) -> None:
        self.events.append(event)
        if self.log is not None:
            self.log.forward(event, sinks=self.sinks)


def run_stage_child(command: str, argv: Sequence[str], log: EventLog) -> list[BaseEvent]:
    """Run `python -m qlora_kit COMMAND *argv --no-plugins --events FILE` to its end and return the events it
    wrote, after handing each to `log`'s hooks as it was numbered in the child (the child loads no plugins: the
    parent's hooks hear its events). Raises the typed error for a failure (Child.error); a child that died by a
    signal first gets its events ended as the stage would have: `stage ... failed` and `error`, into `log`."""
    child = Child([command, *argv, "--no-plugins"], log, events="file", sinks=False, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    try:
        child.wait()
    except BaseException:
        child.kill()  # as subprocess.call does: an interrupted parent leaves no stage running behind it
        raise
    crash = child.crash()
    if crash is not None:
        log.emit("stage", name=command, status="failed", error=str(crash))
        log.report_error(crash)
        raise crash
    error = child.error()
    if error is not None:
        raise error
    return child.events
