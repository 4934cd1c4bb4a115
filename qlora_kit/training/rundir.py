"""The run directory: `output.dir/<name>/`, self-describing and never lying about completion.

    recipe.yaml     the resolved recipe (every default and "auto" spelled out)
    run.json        status: running | interrupted | failed | complete (+ timings, versions, base model)
    events.jsonl    one JSON object per line; schema below
    checkpoints/    resumable trainer checkpoints (checkpoint-<step>/)
    adapter/        final LoRA adapter: safetensors + adapter_config.json + tokenizer with its chat template
    metrics.json    written only when the run completes

Completion is written last, and every file that marks completion (adapter/, metrics.json, run.json) is written to
a temporary name and renamed, so an interrupted or crashed run never looks complete.

events.jsonl: one event per line, as defined (and versioned) in qlora_kit/events.py; `qk.events_schema()` and
`qlora-kit events-schema` give its JSON Schema.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from qlora_kit.errors import UsageError

STATUSES = ("running", "interrupted", "failed", "complete")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class RunDir:
    def __init__(self, root: Path, writer: bool = True):
        self.root = Path(root)
        # False on every rank but 0 of a distributed run: they read the run directory, never write it.
        self.writer = writer
        self.recipe = self.root / "recipe.yaml"
        self.status_file = self.root / "run.json"
        self.events = self.root / "events.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.adapter = self.root / "adapter"
        self.metrics = self.root / "metrics.json"
        self.log = None  # the run's EventLog, attached once the run has started

    # --- state ---------------------------------------------------------------------------------------------
    def read_status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def require_complete(self, command: str) -> dict:
        """run.json of a finished run, for the stages that start from one (merge, eval); else a one-line error."""
        if not self.root.is_dir():
            raise UsageError(f"{self.root}: no such run directory")
        status = self.read_status()
        if status.get("status") != "complete":
            raise UsageError(f"{self.root}: the run never finished (status: {status.get('status', 'unknown')}); "
                             f"{command} needs a complete run; continue it with `qlora-kit train RECIPE --resume`")
        return status

    @property
    def status(self) -> str | None:
        return self.read_status().get("status")

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint that was written completely (trainer_state.json is saved last)."""
        if not self.checkpoints.is_dir():
            return None
        done = [p for p in self.checkpoints.glob("checkpoint-*")
                if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()]
        return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)

    # --- lifecycle -----------------------------------------------------------------------------------------
    def check_start(self, resume: bool, overwrite: bool) -> None:
        """Decide, before any heavy work, whether this run may start here."""
        exists = self.root.exists() and any(self.root.iterdir())
        if resume:
            if not exists:
                raise UsageError(f"{self.root}: nothing to resume (no such run); drop --resume to start it")
            if self.status == "complete":
                raise UsageError(f"{self.root}: this run is already complete, nothing to resume; {self._done_hint()}")
            if self.latest_checkpoint() is None:
                raise UsageError(f"{self.root}: no complete checkpoint to resume from; rerun with --overwrite to "
                                 "start again")
            return
        if exists and not overwrite and self.status == "complete":
            raise UsageError(f"{self.root} already exists and is complete (nothing left to train); {self._done_hint()}")
        if exists and not overwrite:
            status = self.status or "unknown"
            raise UsageError(f"{self.root} already exists (status: {status}); use --resume to continue it, "
                             "--overwrite to replace it, or --set output.name=NEW_NAME")

    def _done_hint(self) -> str:
        # --resume has nothing left to do on a finished run: name what does something.
        return (f"use it (qlora-kit eval|merge|export {self.root}), --overwrite to train it again, or "
                "--set output.name=NEW_NAME for another run")

    def check_world_size(self, world_size: int) -> None:
        """Resume with the processes the run was trained on: the data order, the global batch and the RNG state of
        each rank in the checkpoint depend on them."""
        status = self.read_status()
        before = int(status.get("world_size") or 1)
        if before != world_size:
            batch = f" (global batch {status['global_batch_size']})" if status.get("global_batch_size") else ""
            raise UsageError(f"{self.root}: this run was trained by {before} process{'es' if before > 1 else ''}"
                             f"{batch} and would resume with {world_size}; resume it with the same world size "
                             f"(--nproc {before}, or the same distributed.nproc x nnodes), or start a new run with "
                             "--set output.name=NEW_NAME")

    def start(self, recipe_yaml: str, resume: bool, overwrite: bool, info: dict) -> None:
        if not self.writer:
            return
        if overwrite and not resume and self.root.exists():
            shutil.rmtree(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if resume:
                saved = self.recipe.read_text(encoding="utf-8") if self.recipe.is_file() else None
                if saved is not None and saved != recipe_yaml:
                    raise UsageError(f"{self.root}: the recipe differs from the one this run started with "
                                     f"({self.recipe}); resume with the same recipe and --set values, or start a "
                                     "new run with --set output.name=NEW_NAME")
            else:
                atomic_write_text(self.recipe, recipe_yaml)
            previous = self.read_status() if resume else {}
            self.write_status("running", started=previous.get("started", time.time()), **info)
        except OSError as exc:
            raise UsageError(f"output.dir: cannot write {self.root}: {exc.strerror or exc}") from None

    def write_status(self, status: str, **fields) -> None:
        assert status in STATUSES, status
        if not self.writer:
            return
        data = {**self.read_status(), **fields, "status": status, "updated": time.time()}
        atomic_write_json(self.status_file, data)

    def event(self, kind: str, **fields) -> None:
        self.log.emit(kind, **fields)

    def publish_dir(self, tmp: Path, final: Path) -> None:
        """Move a fully written directory into place (replacing an older one)."""
        if not self.writer:
            return
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
