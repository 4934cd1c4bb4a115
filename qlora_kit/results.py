"""Typed results of the API's calls, read back from what the stages wrote (run.json, metrics, reports, and the
`artifact` events), so a result built in the host from a child process's run equals one built in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["complete", "cancelled", "failed"]


class Artifact(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str = Field(description="adapter, metrics, merged_shard, merge_report, gguf, modelfile, export_report.")
    path: str
    bytes: int
    sha256: str


class _Result(BaseModel):
    status: Status
    run_dir: str | None
    metrics: dict[str, Any] | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    error: str | None = None

    def artifact(self, kind: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.kind == kind]


class TrainResult(_Result):
    run_id: str | None = None
    exit_code: int = 0
    step: int | None = Field(None, description="Last optimizer step reached.")


class MergeResult(_Result):
    out_dir: str


class ExportResult(_Result):
    out_dir: str


def artifacts_in(run_dir: Path, kinds: tuple[str, ...] | None = None, since_seq: int = 0) -> list[Artifact]:
    """The run's artifact events, newest per path, for files that still exist."""
    from qlora_kit.eventlog import read_events

    events = Path(run_dir) / "events.jsonl"
    if not events.is_file():
        return []
    latest: dict[str, Artifact] = {}
    for e in read_events(events):
        if e.event == "artifact" and e.seq > since_seq and (kinds is None or e.kind in kinds):
            latest[e.path] = Artifact(kind=e.kind, path=e.path, bytes=e.bytes, sha256=e.sha256)
    return [a for a in latest.values() if Path(a.path).is_file()]


def train_result(run_dir: Path, exit_code: int = 0, error: str | None = None) -> TrainResult:
    run_dir = Path(run_dir)
    status = _read_json(run_dir / "run.json") or {}
    state = status.get("status")
    result_status: Status = {"complete": "complete", "interrupted": "cancelled"}.get(state, "failed")
    return TrainResult(status=result_status, run_dir=str(run_dir), run_id=status.get("run_id"),
                       metrics=_read_json(run_dir / "metrics.json"), artifacts=artifacts_in(run_dir),
                       exit_code=exit_code, step=status.get("step"), error=error or status.get("error"))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
