"""`qlora-kit train` with several processes: start torchrun, follow it, and answer for the whole run.

The supervisor is the process the user started (one per machine). It checks the recipe and the run directory,
then starts `python -m torch.distributed.run ... -m qlora_kit train RECIPE` in a session of its own, so a Ctrl-C in
the terminal reaches the supervisor alone, never the workers half-way through a collective. Then:

- events: rank 0 writes the run's events.jsonl; the supervisor forwards each new line to its own sinks and hooks
  (`--events -`, `--hook`, plugins), as it does for the merge/export stages it runs afterwards;
- cancel: the first SIGINT/SIGTERM writes STOP (with the reason) into the control directory its workers watch;
  they agree at the next step boundary, save one checkpoint and exit. A second signal SIGKILLs them at once;
- failure: each failing rank leaves its one-line error in the control directory; the supervisor reports the first
  one (errors that only say a peer went away come second), marks the run failed and exits with that error's code;
- no orphans: every process torchrun started is tracked and killed if still alive when the supervisor returns;
  torchrun itself gets SIGTERM if the supervisor dies (PR_SET_PDEATHSIG), and then stops its workers.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from qlora_kit.distributed.env import CONTROL_ENV, Launch
from qlora_kit.distributed.sync import PEER_GONE, STOP_NAME
from qlora_kit.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, QKError, StageError, error_for_kind
from qlora_kit.process import Child
from qlora_kit.process.tree import die_with_parent, kill_tracked, track_descendants

if TYPE_CHECKING:
    from qlora_kit.training.context import RunContext

TORCHRUN = "torch.distributed.run"


def torchrun_command(launch: Launch, recipe: str, worker_args: list[str]) -> list[str]:
    """`python -m torch.distributed.run` with a static rendezvous on machine 0 (master_addr:master_port)."""
    return [sys.executable, "-m", TORCHRUN, *torchrun_args(launch, recipe, worker_args)]


def torchrun_args(launch: Launch, recipe: str, worker_args: list[str]) -> list[str]:
    """torchrun's own arguments: this machine's share of the run, then `-m qlora_kit train RECIPE ...`."""
    return ["--nnodes", str(launch.nnodes), "--node-rank", str(launch.node_rank), "--nproc-per-node",
            str(launch.nproc), "--master-addr", launch.master_addr, "--master-port", str(launch.master_port),
            "--max-restarts", "0", "-m", "qlora_kit", "train", recipe, *worker_args]


def supervise(launch: Launch, ctx: RunContext, overrides: list[str]) -> int:
    """Run the context's recipe on `launch`'s processes; returns the exit code (raises QKError for a failed
    run). `overrides` are the user's --set values, passed on to every worker."""
    from qlora_kit.recipe.checks import check_paths
    from qlora_kit.training.rundir import RunDir

    recipe = ctx.recipe
    check_paths(recipe, ctx.source)
    main = launch.node_rank == 0
    run = RunDir(Path(recipe.output.dir).absolute() / recipe.output.name, writer=main)
    if main:
        run.check_start(ctx.resume, ctx.overwrite)
        if ctx.resume:
            run.check_world_size(launch.world_size)
        if ctx.overwrite and not ctx.resume and run.root.exists():
            shutil.rmtree(run.root)  # here, not in rank 0: the log below must start from an empty file
        ctx.log.attach(run.events, None)  # forwards what rank 0 appends from now on
    control = Path(tempfile.mkdtemp(prefix="qlora-kit-dist-"))
    ctx.console(f"distributed: {launch.strategy}, {launch.nproc} process(es) here x {launch.nnodes} machine(s) = "
                f"world size {launch.world_size}; rendezvous {launch.master_addr}:{launch.master_port}")
    try:
        code, stop_reason = _run_torchrun(torchrun_args(launch, ctx.source, _worker_args(launch, ctx, overrides)),
                                          control, ctx.log if main else None, ctx.warnings)
        if not main:
            return _other_machine_outcome(code, control)
        return _outcome(ctx, run, code, control, stop_reason)
    finally:
        shutil.rmtree(control, ignore_errors=True)


def _worker_args(launch: Launch, ctx: RunContext, overrides: list[str]) -> list[str]:
    args = [f"--set={o}" for o in overrides] + [f"--set=distributed.strategy={launch.strategy}",
                                                 f"--set=distributed.nproc={launch.nproc}"]
    args += ["--resume"] if ctx.resume else []
    return [*args, "--no-plugins", *ctx.stage_args]


def _run_torchrun(args: list[str], control: Path, log, warnings) -> tuple[int, str | None]:
    """torchrun in a session of its own (a terminal's Ctrl-C reaches the supervisor alone), rank 0's events
    forwarded as they arrive; every process it started is killed if still alive when this returns."""
    watcher = _Signals(control)
    tracked: dict[int, str] = {}
    pending = list(warnings)

    def tick() -> None:
        nonlocal pending
        track_descendants(child.pid, tracked)
        pending = _forward(log, pending)
        if watcher.terminate_now:
            # At once means SIGKILL: a worker treats SIGTERM as one more request to checkpoint and stop.
            # A checkpoint cut short is never resumed from (trainer_state.json is written last).
            kill_tracked(tracked, signal.SIGKILL)

    with open(control / "launcher.log", "w", encoding="utf-8") as launcher_log:
        child = Child(args, log, events="log", module=TORCHRUN, watch_crash=False,
                      env={CONTROL_ENV: str(control), "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
                      stderr=launcher_log, start_new_session=True, preexec_fn=die_with_parent)
        try:
            with watcher:
                code = child.follow(tick)
            _forward(log, pending)
        finally:
            if child.returncode is None:
                child.kill()
            kill_tracked(tracked, signal.SIGKILL)  # nothing torchrun started outlives the supervisor
    return code, watcher.reason


def _forward(log, pending: list[str]) -> list[str]:
    """Deliver rank 0's new events; plugin warnings go in once the run has an id (after its run_start)."""
    if log is None:
        return pending
    log.forward_appended()
    if pending and log.run_id is None and log.path is not None:
        status = log.path.parent / "run.json"
        if status.is_file():
            log.run_id = json.loads(status.read_text(encoding="utf-8")).get("run_id")
    if pending and log.run_id:
        for message in pending:
            log.emit("warning", message=message, source="plugins")
        return []
    return pending


def _outcome(ctx: RunContext, run, code: int, control: Path, stop_reason) -> int:
    log = ctx.log
    log.run_id = log.run_id or run.read_status().get("run_id")
    status = run.read_status().get("status")
    if code == 0 and status == "complete":
        from qlora_kit.recipe import load_recipe
        from qlora_kit.training.finish import end_with_later_stages

        end_with_later_stages(ctx, run, load_recipe(run.recipe))
        return EXIT_OK
    if status == "interrupted" and _ended(run):  # rank 0 finished the cancel (a second signal may have come late)
        from qlora_kit.eventlog import read_events

        cancelled = [e for e in read_events(run.events) if e.event == "cancelled"]
        reason = cancelled[-1].reason if cancelled else stop_reason
        ctx.console(f"interrupted; every rank stopped after the same step, checkpoint saved. Continue with: "
                    f"{ctx.resume_hint}")
        return EXIT_TERMINATED if reason == "SIGTERM" else EXIT_INTERRUPTED
    if stop_reason is not None and not _rank_errors(control):  # asked twice: stopped at once, no checkpoint
        if run.status_file.is_file():
            run.write_status("interrupted")
            log.emit("run_end", status="interrupted")
        return EXIT_TERMINATED if stop_reason == "SIGTERM" else EXIT_INTERRUPTED
    error = _first_error(control, code)
    if run.status_file.is_file():
        run.write_status("failed", error=str(error))
    else:  # no rank got as far as creating the run directory: the error goes to the sinks and hooks only
        log.attach(None, None)
    log.report_error(error)
    log.emit("run_end", status="failed", error=str(error))
    raise error


def _ended(run) -> bool:
    """Whether the run's last event is a run_end (this session's rank 0 closed the log itself)."""
    from qlora_kit.eventlog import read_events

    try:
        events = read_events(run.events)
    except OSError:
        return False
    return bool(events) and events[-1].event == "run_end"


def _other_machine_outcome(code: int, control: Path) -> int:
    if code == 0:
        return EXIT_OK
    if _rank_errors(control):
        raise _first_error(control, code)
    raise StageError(f"the run failed on another machine (torchrun exited with code {code}); machine 0 reports "
                     "the failing rank's error and holds the run directory")


def _rank_errors(control: Path) -> list[dict]:
    out = []
    for path in sorted(control.glob("rank-*.json")):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out


def _first_error(control: Path, code: int) -> QKError:
    """The error to report: the earliest one that is not just 'a peer went away', else the earliest."""
    errors = _rank_errors(control)
    if not errors:
        tail = _last_line(control / "launcher.log")
        return StageError(f"torchrun exited with code {code} before any rank reported an error"
                          + (f": {tail}" if tail else ""))
    errors.sort(key=lambda e: (any(m in e["message"] for m in PEER_GONE), e["t"]))
    first = errors[0]
    error = error_for_kind(first["kind"], f"rank {first['rank']}: {first['message']}")
    if first.get("exit_code") in (1, 2, 3):
        error.exit_code = first["exit_code"]
    return error


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else ""


class _Signals:
    """First SIGINT/SIGTERM: ask the workers to checkpoint and stop (STOP in the control dir). Second: kill them."""

    def __init__(self, control: Path):
        self.control = control
        self.reason: str | None = None
        self.terminate_now = False
        self._previous: dict = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            print(f"{name} again: stopping every rank now, without a checkpoint", file=sys.stderr, flush=True)
            self.terminate_now = True
            return
        self.reason = name
        tmp = self.control / f".{STOP_NAME}.tmp"
        tmp.write_text(name, encoding="utf-8")
        tmp.replace(self.control / STOP_NAME)
        print(f"{name}: every rank saves a checkpoint after this step ({name} again stops at once)",
              file=sys.stderr, flush=True)
