"""Job records, persisted under the server root so that a restart (or a crash) loses no job.

    ROOT/.qlora-kit-server/jobs/ID.json    one record per job (written atomically: temp file + rename)
    ROOT/.qlora-kit-server/jobs/ID.yaml    the job's resolved recipe (what the child process trains)
    ROOT/.qlora-kit-server/logs/ID.log     the child's human output (stderr)

The queue is not a separate file: it is the queued records in the order they were (re)queued, so the records
alone are the whole truth and nothing can disagree with them.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

Status = Literal["queued", "running", "interrupted", "failed", "complete"]
ACTIVE = ("queued", "running")
STATE_DIR = ".qlora-kit-server"


class JobRecord(BaseModel):
    id: str
    status: Status = "queued"
    run_dir: str
    created: float
    queued_at: float  # FIFO order; set again when the job is resumed
    order: int  # tie-break for jobs queued in the same instant
    mode: Literal["fresh", "resume", "overwrite"] = "fresh"  # how the next start runs (`qlora-kit train` flags)
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    error: str | None = None
    pid: int | None = None
    pid_start: str | None = None  # the child's start time (/proc), so a reused pid is never mistaken for it


class JobStore:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.jobs_dir = self.root / STATE_DIR / "jobs"
        self.logs_dir = self.root / STATE_DIR / "logs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._jobs: dict[str, JobRecord] = {}
        for path in sorted(self.jobs_dir.glob("*.json")):
            try:
                record = JobRecord.model_validate_json(path.read_text(encoding="utf-8"))
            except ValueError:
                continue  # a record cut short by a crash mid-write cannot happen (atomic rename); skip junk
            self._jobs[record.id] = record
        self._order = itertools.count(max((r.order for r in self._jobs.values()), default=0) + 1)

    def new_id(self) -> str:
        return uuid.uuid4().hex[:12]

    def recipe_path(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.yaml"

    def log_path(self, job_id: str) -> Path:
        return self.logs_dir / f"{job_id}.log"

    def add(self, job_id: str, run_dir: Path, recipe_yaml: str, mode: str = "fresh") -> JobRecord:
        with self._lock:
            now = time.time()
            _atomic_write(self.recipe_path(job_id), recipe_yaml)
            record = JobRecord(id=job_id, run_dir=str(run_dir), created=now, queued_at=now, order=next(self._order),
                               mode=mode)
            self._save(record)
            return record

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[JobRecord]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda r: (r.created, r.order))

    def queued(self) -> list[JobRecord]:
        with self._lock:
            queued = [r for r in self._jobs.values() if r.status == "queued"]
        return sorted(queued, key=lambda r: (r.queued_at, r.order))

    def queue_position(self, job_id: str) -> int | None:
        """0 for the next job to start; None when the job is not queued."""
        ids = [r.id for r in self.queued()]
        return ids.index(job_id) if job_id in ids else None

    def update(self, job_id: str, **fields) -> JobRecord:
        with self._lock:
            record = self._jobs[job_id].model_copy(update=fields)
            self._save(record)
            return record

    def requeue(self, job_id: str, mode: str) -> JobRecord:
        return self.update(job_id, status="queued", mode=mode, queued_at=time.time(), order=next(self._order),
                           error=None, exit_code=None, finished=None, pid=None, pid_start=None)

    def claims(self, run_dir: Path) -> JobRecord | None:
        """The job that owns a run directory, if any."""
        with self._lock:
            return next((r for r in self._jobs.values() if Path(r.run_dir) == Path(run_dir)), None)

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            for path in (self.jobs_dir / f"{job_id}.json", self.recipe_path(job_id), self.log_path(job_id)):
                path.unlink(missing_ok=True)

    def _save(self, record: JobRecord) -> None:
        _atomic_write(self.jobs_dir / f"{record.id}.json", record.model_dump_json(indent=1))
        self._jobs[record.id] = record


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
