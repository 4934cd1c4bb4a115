"""A run's training numbers over all its sessions (a cancel and a resume make two), read back from events.jsonl.

metrics.json describes the whole run, whatever its sessions were, but Hugging Face's counters restart with each
process: its `training_loss` divides this session's loss sum by the whole run's step count (a run resumed halfway
reports about half its loss), and the callbacks only saw this session's steps. Every session's step events are in
the run's log, so the run's numbers are computed from there:

- steps: each session's logged steps; a session resumed from checkpoint-N replaces whatever the earlier ones
  logged after step N (a step redone after a crash counts once, as the model saw it last).
- train_loss: the mean of the logged losses, each weighted by the optimizer steps it averages (HF logs the mean
  over the steps since its previous log, and a resumed session starts counting at its checkpoint). With every
  step logged (logging_steps 1) this is the plain mean per step, HF's own `training_loss` for an unbroken run;
  steps after the last log are in no step event and are not counted.
- train_seconds / wall_seconds: this session's, plus each earlier session's train stage (to its `stage end`, or
  to the session's last event when it was cut short: a cancel, a crash) and its time from run_start to its last
  event (an earlier session's start-up before run_start is not in the log).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Session:
    resumed_step: int = 0
    started: float = 0.0
    last: float = 0.0
    train_started: float | None = None
    train_seconds: float | None = None
    steps: list = field(default_factory=list)  # (step, loss, weight)
    rates: list = field(default_factory=list)
    memory: list = field(default_factory=list)


def read_sessions(path: Path) -> list[Session]:
    from qlora_kit.eventlog import read_events

    sessions: list[Session] = []
    for e in read_events(path):
        if e.event == "run_start":
            resumed = int(Path(e.resumed_from).name.rsplit("-", 1)[-1]) if e.resumed_from else 0
            sessions.append(Session(resumed_step=resumed, started=e.t, last=e.t))
        if not sessions:
            continue
        s = sessions[-1]
        s.last = e.t
        if e.event == "stage" and e.name == "train":
            s.train_started = e.t if e.status == "start" else s.train_started
            s.train_seconds = e.seconds if e.status == "end" else s.train_seconds
        elif e.event == "step":
            previous = s.steps[-1][0] if s.steps else s.resumed_step
            s.steps.append((e.step, e.loss, max(e.step - previous, 1)))
            s.rates += [e.tokens_per_s] if e.tokens_per_s else []
            s.memory += [e.memory_bytes] if e.memory_bytes else []
    return sessions


def whole_run(path: Path, train_seconds: float, wall: float) -> dict:
    """first/final/train loss, tokens/s, peak step memory and the times of the run so far; the last session is
    this one (its train_seconds and wall are the measured ones)."""
    sessions = read_sessions(path)
    steps: list = []
    for s in sessions:
        steps = [x for x in steps if x[0] <= s.resumed_step] + s.steps
    earlier = sessions[:-1]
    rates = [r for s in sessions for r in s.rates]
    weight = sum(w for _, _, w in steps)
    return {
        "first_loss": steps[0][1] if steps else None, "final_loss": steps[-1][1] if steps else None,
        "train_loss": sum(loss * w for _, loss, w in steps) / weight if weight else None,
        "tokens_per_second": round(sum(rates) / len(rates), 1) if rates else None,
        "step_memory_bytes": max((m for s in sessions for m in s.memory), default=0),
        "train_seconds": train_seconds + sum(_train_time(s) for s in earlier),
        "wall_seconds": wall + sum(s.last - s.started for s in earlier),
    }


def _train_time(s: Session) -> float:
    if s.train_seconds is not None:
        return s.train_seconds
    return s.last - s.train_started if s.train_started is not None else 0.0
