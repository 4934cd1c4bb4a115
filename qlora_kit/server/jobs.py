"""The queue: one GPU, so one training job at a time, first in first out, each in its own child process
(`qk.start`, i.e. `qlora-kit train RECIPE --events -`), whose events land in RUN_DIR/events.jsonl.

A worker thread takes the oldest queued job, starts it and waits for it; `cancel` sends the child SIGTERM
(checkpoint at the next step boundary, then stop: status interrupted) and `resume` queues it again with
`--resume`. On start-up `recover` settles what a previous server process left behind: a job it was running is
`interrupted` (its child, if still alive, is first asked to checkpoint and stop), queued jobs stay queued.
A server stopped normally (Ctrl-C, SIGTERM) cancels its running job the same way before it exits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from qlora_kit.errors import QKError
from qlora_kit.server.store import JobStore, read_json

RESULT_STATUS = {"complete": "complete", "cancelled": "interrupted", "failed": "failed"}
ORPHAN_WAIT_S = 120.0  # how long a restarted server waits for an orphaned child to checkpoint and exit


class Scheduler:
    def __init__(self, store: JobStore, plugins: bool = True):
        self.store = store
        self.plugins = plugins
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._current: tuple[str, object] | None = None  # (job id, qk.Job)
        self._cancel_asked: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="qlora-kit-queue", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait_s: float = 60.0) -> None:
        """Stop taking jobs; a running one is cancelled (checkpoint, then interrupted) and waited for, bounded."""
        self._stop.set()
        self.notify()
        current = self._current
        if current is not None:
            current[1].cancel()
            self._thread.join(wait_s)

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    @property
    def lock(self) -> threading.Condition:
        """Held while the queue picks its next job; hold it to change queued jobs without racing it."""
        return self._wake

    @property
    def running_id(self) -> str | None:
        current = self._current
        return current[0] if current else None

    def cancel(self, job_id: str) -> str:
        """Cancel a queued or running job; returns its status afterwards (running until the child stops)."""
        record = self.store.get(job_id)
        with self._wake:
            if record.status == "queued":
                return self.store.update(job_id, status="interrupted", finished=time.time()).status
            current = self._current
            if record.status == "running":
                self._cancel_asked.add(job_id)
                if current and current[0] == job_id:
                    current[1].cancel()
        return self.store.get(job_id).status

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                queued = self.store.queued()
                if not queued:
                    self._wake.wait(timeout=1.0)
                    continue
                record = self.store.update(queued[0].id, status="running", started=time.time(), error=None)
            self._run(record)

    def _run(self, record) -> None:
        import qlora_kit as qk

        try:
            job = qk.start(self.store.recipe_path(record.id), resume=record.mode == "resume",
                           overwrite=record.mode == "overwrite", plugins=self.plugins,
                           log_file=self.store.log_path(record.id))
        except QKError as exc:
            self.store.update(record.id, status="failed", error=str(exc), finished=time.time())
            return
        with self._wake:
            self._current = (record.id, job)
            self.store.update(record.id, pid=job.pid, pid_start=_proc_start(job.pid))
            if record.id in self._cancel_asked:
                job.cancel()  # asked between the status change and the child's start
        try:
            result = job.wait()
            status, error, code = RESULT_STATUS.get(result.status, "failed"), result.error, result.exit_code
        except QKError as exc:
            status, error, code = "failed", str(exc), job.returncode
            if code == -signal.SIGTERM and record.id in self._cancel_asked:
                # cancelled before the child installed its handler: nothing was trained, nothing to checkpoint
                status, error = "interrupted", "cancelled before training started"
        finally:
            with self._wake:
                self._current = None
                self._cancel_asked.discard(record.id)
        self.store.update(record.id, status=status, error=error, exit_code=code, finished=time.time(), pid=None,
                          pid_start=None)


def recover(store: JobStore, wait_s: float = ORPHAN_WAIT_S) -> list[str]:
    """Settle the jobs a previous server process left running; returns their ids."""
    settled = []
    for record in store.all():
        if record.status != "running":
            continue
        if record.pid and _proc_start(record.pid) == record.pid_start and record.pid_start:
            _stop_orphan(record.pid, wait_s)
        state = (read_json(Path(record.run_dir) / "run.json") or {}).get("status")
        status = "complete" if state == "complete" else "interrupted"
        store.update(record.id, status=status, finished=time.time(), pid=None, pid_start=None,
                     error=None if status == "complete" else "the server stopped while this job ran; resume it")
        settled.append(record.id)
    return settled


def resume_mode(run_dir: Path) -> str:
    """How to start a stopped job again: from its latest checkpoint, over a run dir without one, or afresh."""
    from qlora_kit.training.rundir import RunDir

    run = RunDir(Path(run_dir))
    if run.root.exists() and run.latest_checkpoint() is not None:
        return "resume"
    return "overwrite" if run.root.exists() else "fresh"


def _stop_orphan(pid: int, wait_s: float) -> None:
    """A training child that outlived its server: SIGTERM (it checkpoints and exits), then wait, bounded."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    stat = _read_stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie (not reaped by its dead parent's init yet) is gone


def _read_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a process from /proc, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], fields[19]


def _proc_start(pid: int) -> str | None:
    stat = _read_stat(pid)
    return stat[1] if stat else None
