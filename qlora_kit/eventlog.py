"""Where events go: numbered, validated, appended to the run's events.jsonl, written to `--events` sinks and handed
to hooks, in that order, from one place.

Several processes write one run's log (training, then the merge and export stages it starts as child processes,
or a later `qlora-kit merge RUN_DIR`). Each append takes an exclusive lock on the file and first reads whatever
other processes appended since, so `seq` never repeats or skips, and the lines another process wrote still reach
this process's sinks and hooks (a host watching a training run sees its merge and export too).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from qlora_kit.events import BaseEvent, make_event, parse_event

Deliver = Callable[[BaseEvent], None]


class EventLog:
    def __init__(self, sinks: Iterable[IO[str]] = (), deliver: Iterable[Deliver] = ()):
        self.run_id: str | None = None
        self.path: Path | None = None
        self.sinks = list(sinks)
        self.deliver = list(deliver)  # e.g. the run's hooks; called after the event is recorded
        self._seq = 0
        self._offset = 0  # bytes of self.path already seen by this process
        self._lock = threading.RLock()  # hooks may emit (a hook failure is a warning event)
        self._reported: weakref.WeakSet = weakref.WeakSet()  # errors already reported (see report_error)

    def muted(self) -> EventLog:
        """A log that records and delivers nothing (a distributed run's other ranks) but shares this one's memory
        of reported errors: an error marked there is not reported again here."""
        quiet = EventLog()
        quiet._reported = self._reported
        return quiet

    def report_error(self, exc: BaseException) -> None:
        """The `error` event for a QKError, once per exception object however many layers it passes (the run,
        the API, the CLI): the first to see it reports it, the others find it already reported."""
        if exc in self._reported:
            return
        self.emit("error", kind=exc.kind, message=str(exc), exit_code=exc.exit_code)
        self.mark_reported(exc)

    def mark_reported(self, exc: BaseException) -> None:
        """Count `exc` as reported without an event: someone else reports it (a distributed run's supervisor)."""
        self._reported.add(exc)

    def was_reported(self, exc: BaseException) -> bool:
        return exc in self._reported

    def attach(self, path: Path | None, run_id: str | None) -> None:
        """Record into `path` from now on, continuing its numbering; nothing already in it is delivered again."""
        with self._lock:
            self.path, self.run_id = (Path(path) if path else None), run_id
            if self.path is None or not self.path.is_file():
                self._offset = 0
                return
            data = self.path.read_bytes()
            self._offset = len(data)
            last = _last_seq(data)
            self._seq = max(self._seq, last)

    def emit(self, kind: str, /, **fields: Any) -> BaseEvent:
        with self._lock:
            if self.path is None:
                self._seq += 1
                event = make_event(kind, run_id=self.run_id, seq=self._seq, t=round(time.time(), 3), **fields)
                self._send(event)
                return event
            with open(self.path, "a+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    others = self._read_new(fh)
                    self._seq += 1
                    event = make_event(kind, run_id=self.run_id, seq=self._seq, t=round(time.time(), 3), **fields)
                    fh.write(event.model_dump_json() + "\n")
                    fh.flush()
                    self._offset = fh.tell()
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
            for other in others:
                self._send(other)
            self._send(event)
            return event

    def forward(self, event: BaseEvent, *, sinks: bool = True) -> None:
        """Deliver an event another process numbered and recorded (a child's), as it was: to the sinks (unless
        `sinks` is False) and the hooks, without recording or renumbering it."""
        with self._lock:
            if sinks:
                self._send(event)
            else:
                for deliver in self.deliver:
                    deliver(event)

    def forward_appended(self) -> None:
        """Deliver what other processes appended to the log since this process last looked."""
        if self.path is None or not self.path.is_file():
            return
        with self._lock:
            with open(self.path, "a+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_SH)
                try:
                    others = self._read_new(fh)
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
            for other in others:
                self._send(other)

    def _read_new(self, fh) -> list[BaseEvent]:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        if end <= self._offset:
            self._offset = min(self._offset, end)
            return []
        fh.seek(self._offset)
        text = fh.read()
        self._offset = end
        events = [parse_event(line) for line in text.splitlines() if line.strip()]
        if events:
            self._seq = max(self._seq, events[-1].seq)
        return events

    def _send(self, event: BaseEvent) -> None:
        line = event.model_dump_json() + "\n"
        for sink in list(self.sinks):
            try:
                sink.write(line)
                sink.flush()
            except BrokenPipeError:
                # The reader is gone (a job server killed mid-run): the run goes on, its events.jsonl is complete,
                # and a signal still stops it with a checkpoint. Closing drops the buffered line with the stream.
                self.sinks.remove(sink)
                with contextlib.suppress(OSError):
                    sink.close()
        for deliver in self.deliver:
            deliver(event)


def _last_seq(data: bytes) -> int:
    for line in reversed(data.splitlines()):
        if line.strip():
            try:
                return int(json.loads(line).get("seq") or 0)
            except (ValueError, AttributeError):
                return 0  # an older log (schema v1) has no seq: continue from 0
    return 0


def read_events(path: Path) -> list[BaseEvent]:
    """Every event in a run's events.jsonl (schema v2 lines; older lines are skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and json.loads(line).get("v") == 2:
            out.append(parse_event(line))
    return out


def attach_run(log: EventLog, run_dir: Path | None) -> None:
    """Record into a run directory's events.jsonl (merge and export of a run), under the run's id."""
    if run_dir is None or not (Path(run_dir) / "run.json").is_file():
        return
    try:
        run_id = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError):
        run_id = None
    log.attach(Path(run_dir) / "events.jsonl", run_id)


@contextlib.contextmanager
def run_stage(log: EventLog, run_dir: Path | None):
    """Record a stage run on a run directory (merge, export, eval) into its events.jsonl, keeping `run_end` last.

    Inside a training pipeline the log is still open (the trainer ends it once its stages are done). A stage run
    later by hand finds the log ended (its last event is a `run_end`): it appends its events after that, then
    ends the log again as the pipeline would have, with `error` (when it failed) and `run_end`, so a reader who
    stops at `run_end` misses nothing. Callers check what they can refuse before any work first: a refused command
    leaves the run's log untouched."""
    attach_run(log, run_dir)
    if log.path is None or not log.path.is_file() or not _ended(log.path):
        yield
        return
    from qlora_kit.errors import QKError, first_line

    try:
        yield
    except QKError as exc:
        log.report_error(exc)  # here, once: the CLI reporting it after this block would follow run_end
        log.emit("run_end", status="failed", error=str(exc))
        raise
    except KeyboardInterrupt:
        log.emit("run_end", status="interrupted")
        raise
    except Exception as exc:
        log.emit("run_end", status="failed", error=f"{type(exc).__name__}: {first_line(exc)}")
        raise
    log.emit("run_end", status="complete")


def _ended(path: Path) -> bool:
    """Whether the log's last event is a `run_end`."""
    last = next((line for line in reversed(path.read_bytes().splitlines()) if line.strip()), b"")
    try:
        return bool(last) and json.loads(last).get("event") == "run_end"
    except ValueError:
        return False


@contextlib.contextmanager
def stage(log: EventLog | None, name: str):
    """`stage` events around a block: start, then end (with seconds) or failed (with the error's first line)."""
    if log is None:
        yield
        return
    from qlora_kit.errors import first_line

    log.emit("stage", name=name, status="start")
    started = time.time()
    try:
        yield
    except BaseException as exc:
        log.emit("stage", name=name, status="failed", error=first_line(exc) or type(exc).__name__)
        raise
    log.emit("stage", name=name, status="end", seconds=round(time.time() - started, 3))


def emit_artifact(log: EventLog | None, kind: str, path: Path) -> None:
    """An `artifact` event for a finished file: kind, absolute path, size and sha256."""
    if log is None:
        return
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    log.emit("artifact", kind=kind, path=str(Path(path).absolute()), bytes=Path(path).stat().st_size,
             sha256=digest.hexdigest())
