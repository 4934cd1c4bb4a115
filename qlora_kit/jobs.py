"""`qk.start`: a training run in a child process, followed through its event stream.

The child is `python -m qlora_kit train RECIPE --events -`: its stdout carries only event JSON lines (its human
output goes to a log file), a reader thread parses them, hands them to the host's hooks and queues them for
`Job.events()`. Unsloth's patching of transformers therefore never touches the host, which imports neither torch
nor Unsloth. `Job.cancel()` sends SIGTERM: the child saves a checkpoint at the next step boundary and stops.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from qlora_kit.control import CancelToken
from qlora_kit.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from qlora_kit.eventlog import EventLog
from qlora_kit.events import BaseEvent
from qlora_kit.hooks import HookSet
from qlora_kit.process import Child
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
        argv = ["train", str(recipe_path)]
        argv += ["--resume"] if resume else ["--overwrite"] if overwrite else []
        argv += [] if plugins else ["--no-plugins"]
        self._queue: queue.Queue = queue.Queue()
        # The host's hooks, then Job.events(); no log to warn into in the host.
        log = EventLog(deliver=[HookSet(hooks, warn=lambda message, source: None), self._queue.put])
        with open(self.log_path, "w", encoding="utf-8") as stderr:
            self._child = Child(argv, log, events="stdout", watch_crash=False, env={"PYTHONUNBUFFERED": "1"},
                                on_end=lambda: self._queue.put(_END), stderr=stderr, stdin=subprocess.DEVNULL)
        self.pid = self._child.pid
        self.history: list[BaseEvent] = self._child.events
        if cancel is not None:
            self._child.cancel_on(cancel)

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
        self._child.terminate()

    @property
    def returncode(self) -> int | None:
        return self._child.returncode

    def wait(self, timeout: float | None = None) -> TrainResult:
        """The run's result; raises the run's QKError if it failed, subprocess.TimeoutExpired on timeout."""
        code = self._child.wait(timeout)
        if code in (0, EXIT_INTERRUPTED, EXIT_TERMINATED):
            # The scratch dir (the recipe copy, and the log unless the host named one) is kept only for a failure,
            # whose message points into it.
            shutil.rmtree(self._tmp, ignore_errors=True)
            return train_result(self.run_dir, exit_code=code)
        raise self._child.error(fallback=self._exited)

    def _exited(self, code: int) -> str:
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        return f"training process exited with code {code}: {' '.join(tail)} (log: {self.log_path})"
