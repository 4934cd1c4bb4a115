"""A fine-tuning job's run directory as OpenAI shows it: `fine_tuning.job.event` objects (the run's events.jsonl
plus the API's own notes: created, cancel/pause asked, resumed), `fine_tuning.job.checkpoint` objects (one per
saved checkpoint, with the step's metrics) and the results CSV (`step,train_loss,train_accuracy,valid_loss,
valid_mean_token_accuracy`; cells we do not compute are empty). Read from disk on each request, so the answers
are the same after a server restart.

Preference (dpo) runs add their metrics (the step and eval events' `preference`, qlora_kit.events.PreferenceMetrics)
under our names with the prefix of the loss beside them: `train_reward_accuracy`, `train_reward_margin`, ...,
`valid_reward_accuracy`, ... in the metrics events' data, the checkpoints' metrics and as extra CSV columns."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

CSV_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
SHOWN = (("reward_accuracy", "reward accuracy", "{:.2f}"), ("reward_margin", "reward margin", "{:.4f}"))


def run_events(run_dir: Path) -> list[dict]:
    try:
        lines = (Path(run_dir) / "events.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if isinstance(event, dict) and "seq" in event and "event" in event:
            out.append(event)
    return out


def append_note(path: Path, message: str, level: str = "info") -> None:
    """An API-level event (the run's events.jsonl belongs to the training child)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"t": time.time(), "level": level, "message": message}) + "\n")


def _notes(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def job_events(job_id: str, run_dir: Path, notes_path: Path) -> list[dict]:
    """fine_tuning.job.event objects, newest first."""
    short = job_id.split("-", 1)[-1]
    out = [_event(f"ftevent-{short}-a{n}", note["t"], note["level"], note["message"])
           for n, note in enumerate(_notes(notes_path), start=1)]
    for e in run_events(run_dir):
        mapped = _describe(e)
        if mapped is not None:
            out.append(_event(f"ftevent-{short}-r{e['seq']}", e["t"], *mapped))
    times = [ev.pop("_t") for ev in out]
    order = sorted(range(len(out)), key=lambda i: (times[i], i), reverse=True)
    return [out[i] for i in order]


def _event(event_id: str, t: float, level: str, message: str, data: dict | None = None) -> dict:
    return {"id": event_id, "object": "fine_tuning.job.event", "created_at": int(t), "level": level,
            "message": message, "data": data or {}, "type": "metrics" if data else "message", "_t": t}


def _describe(e: dict) -> tuple | None:
    """(level, message[, data]) for a run event, or None for events a client has no use for."""
    kind = e["event"]
    if kind == "step":
        data = {"step": e["step"], "train_loss": e["loss"], "total_steps": e["max_steps"],
                "learning_rate": e.get("lr"), "train_mean_token_accuracy": None, **preference(e, "train_")}
        return "info", f"Step {e['step']}/{e['max_steps']}: training loss={e['loss']:.4f}{_shown(e)}", data
    if kind == "eval":
        return "info", f"Step {e['step']}: validation loss={e['eval_loss']:.4f}{_shown(e)}", {
            "step": e["step"], "valid_loss": e["eval_loss"], "valid_mean_token_accuracy": None,
            **preference(e, "valid_")}
    simple = {
        "run_start": lambda: ("info", f"Fine-tuning job started ({e['backend']} on {e['device']})"
                              + (f", resumed from {e['resumed_from']}" if e.get("resumed_from") else "")),
        "data": lambda: ("info", f"Training data: {e['train_rows']} rows, {e['train_tokens']} tokens "
                                 f"({e['trained_tokens']} trained); {e['eval_rows']} validation rows"),
        "checkpoint": lambda: ("info", f"Checkpoint saved at step {e['step']}"),
        "warning": lambda: ("warn", e["message"]),
        "error": lambda: ("error", e["message"]),
        "cancelled": lambda: ("info", f"Stopped at step {e['step']} ({e['reason']})"),
        "run_end": lambda: {"complete": ("info", "The job has successfully completed"),
                            "interrupted": ("info", "The job stopped; it can be resumed"),
                            "failed": ("error", f"The job failed: {e.get('error') or 'see the events above'}")
                            }[e["status"]],
    }
    if kind in simple:
        return simple[kind]()
    if kind == "stage" and e["status"] != "start":
        return ("error", f"Stage {e['name']} failed: {e.get('error')}") if e["status"] == "failed" else (
            "info", f"Stage {e['name']} done in {e.get('seconds') or 0:.1f} s")
    if kind == "artifact" and e["kind"] == "gguf":
        return "info", f"GGUF written: {Path(e['path']).name}"
    return None


GRPO_SHOWN = ("reward", "reward_std", "completion_length_mean", "kl")  # a reinforcement job's metrics


def preference(e: dict, prefix: str) -> dict:
    """A step or eval event's preference metrics (dpo runs) or GRPO rewards (reinforcement runs: the total reward,
    its std, each grader's mean as reward_NAME, the completion length, the KL), those it has, as {prefix + name:
    value}."""
    found = {prefix + k: v for k, v in (e.get("preference") or {}).items() if v is not None}
    grpo = e.get("grpo") or {}
    found.update({prefix + k: grpo[k] for k in GRPO_SHOWN if grpo.get(k) is not None})
    found.update({f"{prefix}reward_{name}": g["mean"] for name, g in (grpo.get("graders") or {}).items()
                  if g.get("mean") is not None})
    return found


def _shown(e: dict) -> str:
    found, grpo = e.get("preference") or {}, e.get("grpo") or {}
    reward = f", reward={grpo['reward']:.4f}" if grpo.get("reward") is not None else ""
    return "".join(f", {label}={fmt.format(found[k])}" for k, label, fmt in SHOWN if found.get(k) is not None) + reward


def step_metrics(events: list[dict]) -> dict[int, dict]:
    """step -> {train_loss, valid_loss, and a dpo run's train_/valid_ preference metrics}; a resumed run's later
    lines win."""
    out: dict[int, dict] = {}
    for e in events:
        if e["event"] == "step":
            out.setdefault(e["step"], {}).update(train_loss=e["loss"], **preference(e, "train_"))
        elif e["event"] == "eval":
            out.setdefault(e["step"], {}).update(valid_loss=e["eval_loss"], **preference(e, "valid_"))
    return out


def checkpoints(job_id: str, run_dir: Path, model_name: str) -> list[dict]:
    """fine_tuning.job.checkpoint objects for the checkpoints still on disk, newest first."""
    events = run_events(run_dir)
    metrics = step_metrics(events)
    saved: dict[int, dict] = {}
    for e in events:
        path = e.get("path") if e["event"] == "checkpoint" else (
            e.get("checkpoint") if e["event"] == "cancelled" else None)
        if path and (Path(run_dir) / path).is_dir():
            saved[e["step"]] = e
    short = job_id.split("-", 1)[-1]
    return [{"id": f"ftckpt-{short}-{step}", "object": "fine_tuning.job.checkpoint", "created_at": int(e["t"]),
             "fine_tuned_model_checkpoint": f"{model_name}:ckpt-step-{step}", "fine_tuning_job_id": job_id,
             "step_number": step, "metrics": {"step": step, "train_loss": None, "valid_loss": None,
                                              **metrics.get(step, {})}}
            for step, e in sorted(saved.items(), reverse=True)]


def results_csv(run_dir: Path) -> bytes:
    """OpenAI's columns, then a dpo run's preference metrics (those it logged, in PREFERENCE_METRICS' order)."""
    from qlora_kit.events import PREFERENCE_METRICS

    rows = sorted(step_metrics(run_events(run_dir)).items())
    found = {k for _, m in rows for k in m}
    extra = [p + n for p in ("train_", "valid_") for n in PREFERENCE_METRICS.values() if p + n in found]
    extra += sorted(k for k in found if k not in extra and k not in ("train_loss", "valid_loss"))  # GRPO's
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *extra])
    for step, m in rows:
        writer.writerow([step, m.get("train_loss", ""), "", m.get("valid_loss", ""), "",
                         *(m.get(k, "") for k in extra)])
    return buf.getvalue().encode()


def last_of(events: list[dict], kind: str) -> dict | None:
    return next((e for e in reversed(events) if e["event"] == kind), None)
