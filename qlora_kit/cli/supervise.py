"""The CLI's watcher for commands that run llama.cpp in their own process (export, eval, chat, serve).

`qlora-kit export ...` started from a shell runs the command in a child process (the same command line, with
QLORA_KIT_SUPERVISED set) and only waits for it: the terminal, stdin/stdout/stderr and the exit code pass straight
through. When the child dies by a signal, this process reports it as crash.py describes: one line on stderr, an
`error` event (to --events and, for a run directory, to its events.jsonl after a `stage ... failed`), exit code
128 + the signal. In-process callers (`main(argv)`, tests) are not watched: the Python API runs these stages in a
child of its own (stages.py).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

WATCHED_COMMANDS = ("export", "eval", "chat", "serve")


def should_watch(args, argv) -> bool:
    from qlora_kit.native.crash import SUPERVISED_ENV

    return argv is None and args.command in WATCHED_COMMANDS and not os.environ.get(SUPERVISED_ENV)


def watch(args) -> int:
    """Run this process's own command line in a child; its exit code, or a crash reported in one line."""
    from qlora_kit.process import Child

    child = Child(sys.argv[1:])  # stdin/stdout/stderr inherited; a crash note in its environment
    child.command = args.command  # the crash names the command, whatever flags come before it
    # Ctrl-C reaches the child from the terminal (same process group); a SIGTERM sent to this pid is passed on.
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: child.terminate())}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    error = child.crash()
    if error is None:
        return code
    print(f"qlora-kit: error: {error}", file=sys.stderr)
    _record(args, error)
    return error.exit_code


def _record(args, error) -> None:
    """The crash as the command's own events would have ended: `stage failed` (for a run) and `error`."""
    from qlora_kit.eventlog import attach_run, read_events

    if not hasattr(args, "events"):
        return
    from qlora_kit.cli.common import event_log

    run = getattr(args, "source", None) or getattr(args, "run_dir", None)
    try:
        with event_log(args) as (log, _warnings):
            was_ended = False
            if run and (Path(run) / "run.json").is_file():
                attach_run(log, Path(run))
                # A stage run by hand on a finished run ends the log again (eventlog.run_stage): run_end stays last.
                was_ended = any(e.event == "run_end" for e in read_events(log.path))
                log.emit("stage", name=args.command, status="failed", error=str(error))
            log.emit("error", kind=error.kind, message=str(error), exit_code=error.exit_code)
            if was_ended:
                log.emit("run_end", status="failed", error=str(error))
    except Exception:  # the crash line is already printed; a broken --hook must not hide it behind a traceback
        pass
