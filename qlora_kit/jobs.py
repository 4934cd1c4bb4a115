"""`qk.start`: a training run in a child process, followed through its event stream.

The child is `python -m qlora_kit train RECIPE --events -`: its stdout carries only event JSON lines (its human
output goes to a log file), a reader thread parses them, hands them to the host's hooks and queues them for
`Job.events()`. Unsloth's patching of transformers therefore never touches the host, which imports neither torch
nor Unsloth. `Job.cancel()` sends SIGTERM: the child saves a checkpoint at the next step boundary and stops.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from qlora_kit.control import CancelToken
from qlora_kit.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, error_for_kind
from qlora_kit.events import BaseEvent, parse_event
from qlora_kit.hooks import HookSet
from qlora_kit.recipe import Recipe, dump_recipe
from qlora_kit.results import TrainResult, train_result

_END = object()


class Job:
    def __init__(self, recipe: Recipe, *, hooks: Iterable[Any] = (), cancel: CancelToken | None = None,
                 resume: bool = False, overwrite: bool = False, plugins: bool = True,
                 log_file: str | Path | None = None):
        recipe = recipe.model_copy(deep=True)
        recipe.output.dir = str(Path(recipe.output.dir).absolute())  # the child may resolve paths elsewhere
        self.run_dir = Path(recipe.output.dir) / recipe.output.name
        self._tmp = Path(tempfile.mkdtemp(prefix="qlora-kit-job-"))
        recipe_path = self._tmp / f"{recipe.output.name}.yaml"
        recipe_path.write_text(dump_recipe(recipe), encoding="utf-8")
        self.log_path = Path(log_file) if log_file else self._tmp / "job.log"
        cmd = [sys.executable, "-m", "qlora_kit", "train", str(recipe_path), "--events", "-"]
        cmd += ["--resume"] if resume else ["--overwrite"] if overwrite else []
        cmd += [] if plugins else ["--no-plugins"]
        self.history: list[BaseEvent] = []
        self._queue: queue.Queue = queue.Queue()
        self._hooks = HookSet(hooks, warn=lambda message, source: None)  # no log to warn into in the host
        with open(self.log_path, "w", encoding="utf-8") as log:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                          text=True, bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.pid = self._proc.pid
        self._reader = threading.Thread(target=self._read, name=f"qlora-kit-job-{self.pid}", daemon=True)
        self._reader.start()
        if cancel is not None:
            threading.Thread(target=self._watch, args=(cancel,), daemon=True).start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            if not line.strip():
                continue
            try:
                event = parse_event(line)
            except ValueError:
                continue  # not an event line (nothing else should reach stdout, but never crash the host)
            self.history.append(event)
            self._hooks(event)
            self._queue.put(event)
        self._queue.put(_END)

    def _watch(self, token: CancelToken) -> None:
        while self._proc.poll() is None:
            if token.wait(0.2):
                self.cancel()
                return

    def events(self) -> Iterator[BaseEvent]:
        """Events as they happen, until the child exits."""
        while True:
            item = self._queue.get()
            if item is _END:
                self._queue.put(_END)  # later calls end at once too
                return
            yield item

    def cancel(self) -> None:
        """Checkpoint at the next step boundary, then stop (status interrupted; resume continues)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float | None = None) -> TrainResult:
        """The run's result; raises the run's QKError if it failed, subprocess.TimeoutExpired on timeout."""
        code = self._proc.wait(timeout)
        self._reader.join()
        if code in (0, EXIT_INTERRUPTED, EXIT_TERMINATED):
            # The scratch dir (the recipe copy, and the log unless the host named one) is kept only for a failure,
            # whose message points into it.
            shutil.rmtree(self._tmp, ignore_errors=True)
            return train_result(self.run_dir, exit_code=code)
        errors = [e for e in self.history if e.event == "error"]
        if errors:
            raise error_for_kind(errors[-1].kind, errors[-1].message)
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise error_for_kind("runtime", f"training process exited with code {code}: {' '.join(tail)} "
                                        f"(log: {self.log_path})")
