"""What the API shows of a job: its record plus what its run directory says (progress from the latest `step`
event, metrics.json, artifacts with size and sha256 from the `artifact` events). Read from disk on each request,
so the answer is the same before and after a server restart."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qlora_kit.server.store import JobRecord, JobStore, read_json

TAIL_BYTES = 64 << 10  # the latest step event is near the end of events.jsonl


def job_view(record: JobRecord, store: JobStore) -> dict[str, Any]:
    run_dir = Path(record.run_dir)
    step = last_event(run_dir / "events.jsonl", "step")
    progress = None
    if step:
        progress = {"step": step["step"], "max_steps": step["max_steps"],
                    "fraction": round(step["step"] / step["max_steps"], 4) if step["max_steps"] else None,
                    "loss": step["loss"], "eta_s": step.get("eta_s"), "seq": step["seq"]}
    return {"id": record.id, "status": record.status, "run_dir": record.run_dir,
            "queue_position": store.queue_position(record.id), "created": record.created,
            "started": record.started, "finished": record.finished, "exit_code": record.exit_code,
            "error": record.error, "progress": progress, "metrics": read_json(run_dir / "metrics.json"),
            "artifacts": artifacts(record)}


def artifacts(record: JobRecord) -> list[dict[str, Any]]:
    """The run's artifacts that lie inside its run directory; `name` (the path relative to it) is what
    `GET /v1/jobs/{id}/artifacts/{name}` takes."""
    from qlora_kit.results import artifacts_in

    run_dir = Path(record.run_dir)
    if not (run_dir / "events.jsonl").is_file():
        return []
    out = []
    for a in artifacts_in(run_dir):
        path = Path(a.path)
        if not path.is_relative_to(run_dir):
            continue
        name = path.relative_to(run_dir).as_posix()
        out.append({"name": name, "kind": a.kind, "bytes": a.bytes, "sha256": a.sha256,
                    "url": f"/v1/jobs/{record.id}/artifacts/{name}"})
    return out


def last_event(path: Path, kind: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the first line of the tail may be cut
        if isinstance(event, dict) and event.get("event") == kind:
            return event
    return None
