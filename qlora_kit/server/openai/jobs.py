"""OpenAI's fine-tuning jobs on the server's one queue.

A fine-tuning job IS a /v1/jobs job (same JobStore record, id `ftjob-...`, same Scheduler, same run directory
ROOT/runs/ID): this module only keeps what OpenAI's object adds (model alias, files, suffix, metadata, the
method and its hyperparameters, whether the client cancelled or paused it, the results file) in
ROOT/.qlora-kit-server/fine_tuning/ID.json, plus API notes for the event list in ID.notes.jsonl.

Statuses: queued -> queued; running -> running; complete -> succeeded; failed -> failed; interrupted -> cancelled
when the client cancelled it, otherwise paused (paused by the client, or stopped by a server restart: both resume
from the checkpoint). Pause is our cancel (checkpoint at the next step, then stop), cancel is the same and final.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from qlora_kit.server.openai import events as ev
from qlora_kit.server.openai.common import read_records, state_dir, write_json
from qlora_kit.server.openai.errors import conflict, not_found
from qlora_kit.server.store import ACTIVE, read_json

STATUS = {"queued": "queued", "running": "running", "complete": "succeeded", "failed": "failed"}
FINAL = ("succeeded", "failed", "cancelled")


class TuneStore:
    def __init__(self, root: Path):
        self.dir = state_dir(root, "fine_tuning")
        self.lock = threading.RLock()
        self.records = {r["id"]: r for r in read_records(self.dir) if "id" in r}

    def notes_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.notes.jsonl"

    def save(self, record: dict) -> dict:
        with self.lock:
            write_json(self.dir / f"{record['id']}.json", record)
            self.records[record["id"]] = record
        return record

    def update(self, job_id: str, **fields) -> dict:
        with self.lock:
            return self.save({**self.records[job_id], **fields})

    def note(self, job_id: str, message: str, level: str = "info") -> None:
        ev.append_note(self.notes_path(job_id), message, level)

    def all(self) -> list[dict]:
        with self.lock:
            return sorted(self.records.values(), key=lambda r: (r["_t"], r["id"]), reverse=True)


def new_record(request: dict, recipe, job_id: str) -> dict:
    """The job's own record; `hyperparameters` as resolved (the recipe's values where "auto"), beta for dpo."""
    hp = request["hyperparameters"]
    epochs = recipe.train.epochs
    resolved = {"n_epochs": int(epochs) if float(epochs).is_integer() else epochs,
                "batch_size": recipe.train.batch_size,
                "learning_rate_multiplier": 1.0 if hp["learning_rate_multiplier"] == "auto"
                else hp["learning_rate_multiplier"]}
    if request["method_type"] == "dpo":
        from qlora_kit.recipe.methods import DEFAULT_BETA

        resolved["beta"] = recipe.preference.beta or DEFAULT_BETA["dpo"]
    if request["method_type"] == "reinforcement":
        per_prompt = recipe.grpo.num_generations  # our batch counts completions, OpenAI's prompts
        if isinstance(recipe.train.batch_size, int):
            resolved["batch_size"] = max(1, recipe.train.batch_size // per_prompt)
        resolved["compute_multiplier"] = 1.0 if hp["compute_multiplier"] == "auto" else hp["compute_multiplier"]
        resolved["eval_interval"] = recipe.train.eval_steps or "auto"
    now = time.time()
    return {"id": job_id, "model": request["model"], "created_at": int(now), "_t": now,
            "training_file": request["training_file"], "validation_file": request.get("validation_file"),
            "suffix": request.get("suffix"), "seed": recipe.train.seed, "metadata": request.get("metadata"),
            "method": request["method_type"], "hyperparameters": resolved, "asked": None, "result_files": [],
            "model_deleted": False, **({"grader": request["grader"]} if request.get("grader") else {})}


def fine_tuned_name(tune: dict) -> str:
    return f"ft:{tune['model']}:{tune['suffix'] or ''}:{tune['id'].split('-', 1)[-1]}"


def status_of(tune: dict, record) -> str:
    if record.status == "interrupted" or (record.status == "running" and tune["asked"] == "cancelled"):
        return "cancelled" if tune["asked"] == "cancelled" else "paused"
    return STATUS[record.status]


def job_object(tune: dict, record, files, tunes: TuneStore) -> dict:
    """The `fine_tuning.job` object; the results CSV is registered as a file the first time it is shown."""
    status = status_of(tune, record)
    run_dir = Path(record.run_dir)
    if status == "succeeded" and not tune["result_files"]:
        with files.lock:
            tune = tunes.records[tune["id"]]
            if not tune["result_files"]:
                made = files.add_bytes(ev.results_csv(run_dir), "step_metrics.csv", "fine-tune-results")
                tune = tunes.update(tune["id"], result_files=[made["id"]])
    events = ev.run_events(run_dir) if status in ("running", "succeeded", "failed") else []
    metrics = (read_json(run_dir / "metrics.json") or {}) if status == "succeeded" else {}
    step = ev.last_of(events, "step") if status == "running" else None
    hp, method = tune["hyperparameters"], tune.get("method", "supervised")  # records before dpo have no method
    return {
        "id": tune["id"], "object": "fine_tuning.job", "model": tune["model"], "created_at": tune["created_at"],
        "finished_at": int(record.finished) if record.finished and status in FINAL else None,
        "fine_tuned_model": fine_tuned_name(tune) if status == "succeeded" else None,
        "organization_id": "qlora-kit", "result_files": tune["result_files"], "status": status,
        "validation_file": tune["validation_file"], "training_file": tune["training_file"],
        "hyperparameters": {k: v for k, v in hp.items() if k != "beta"},  # the shared ones, as OpenAI shows them
        "trained_tokens": metrics.get("tokens_seen") if status == "succeeded" else None,
        "error": _error(record, events) if status == "failed" else None,
        "estimated_finish": int(step["t"] + step["eta_s"]) if step and step.get("eta_s") is not None else None,
        "integrations": [], "seed": tune["seed"], "suffix": tune["suffix"], "metadata": tune["metadata"],
        "method": {"type": method, method: {"hyperparameters": hp,
                                            **({"grader": tune["grader"]} if tune.get("grader") else {})}},
    }


def _error(record, events: list[dict]) -> dict:
    failure = ev.last_of(events, "error")
    code = f"{failure['kind']}_error" if failure else "training_failed"
    return {"code": code, "message": record.error or (failure or {}).get("message") or "the job failed",
            "param": "training_file" if failure and failure["kind"] == "data" else None}


class Control:
    """cancel / pause / resume through the server's Scheduler and JobStore (the /v1/jobs machinery)."""

    def __init__(self, ctx, tunes: TuneStore):
        self.ctx, self.tunes = ctx, tunes

    def find(self, job_id: str) -> tuple[dict, object]:
        tune, record = self.tunes.records.get(job_id), self.ctx.store.get(job_id)
        if tune is None or record is None:
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        return tune, record

    def stop(self, job_id: str, why: str) -> None:
        tune, record = self.find(job_id)
        status = status_of(tune, record)
        allowed = ("queued", "running", "paused") if why == "cancelled" else ("queued", "running")
        if status not in allowed or (why == "paused" and tune["asked"] == "paused"):
            raise conflict(f"fine-tuning job {job_id} is {status}"
                           f"{' (pausing)' if tune['asked'] == 'paused' and status == 'running' else ''}; only "
                           f"{' or '.join(allowed)} jobs can be {why}")
        self.tunes.update(job_id, asked=why)
        self.tunes.note(job_id, f"{'Cancel' if why == 'cancelled' else 'Pause'} requested")
        if record.status in ACTIVE:
            self.ctx.scheduler.cancel(job_id)

    def resume(self, job_id: str) -> None:
        from qlora_kit.server.jobs import resume_mode

        tune, record = self.find(job_id)
        status = status_of(tune, record)
        if status != "paused":
            pausing = status == "running" and tune["asked"] == "paused"
            raise conflict(f"fine-tuning job {job_id} is {status}"
                           f"{' (still pausing: it stops at the next step)' if pausing else ''}; only paused jobs "
                           "resume")
        with self.ctx.scheduler.lock:
            self.ctx.store.requeue(job_id, resume_mode(Path(record.run_dir)))
            self.tunes.update(job_id, asked=None)
        self.tunes.note(job_id, "Resumed: queued again, continues from its latest checkpoint")
        self.ctx.scheduler.notify()
