"""A process that dies by a signal is reported in one line: the signal by name, the stage, the file native code
was working on, and what to do next. Never "exit code -11".

How the file is known: a parent that starts a stage sets QLORA_KIT_CRASH_NOTE to a scratch file; the child's native
work (`note`, called by the llama.cpp loader and the GGUF writer) writes what it is about to do there. The parent
reads it only when the child died by a signal. The exit code of a crash is 128 + the signal's number, as shells
report it (139 SIGSEGV, 134 SIGABRT, 137 SIGKILL); the run's events end with an `error` event carrying the line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from pathlib import Path

NOTE_ENV = "QLORA_KIT_CRASH_NOTE"
# Set in a process the CLI already watches (its own child), so that process does not start another watcher.
SUPERVISED_ENV = "QLORA_KIT_SUPERVISED"
# What each signal usually means here, in a few words.
MEANING = {"SIGSEGV": "segmentation fault", "SIGABRT": "aborted, e.g. an uncaught C++ exception",
           "SIGBUS": "bus error", "SIGILL": "illegal instruction: one this CPU or VM does not allow",
           "SIGFPE": "arithmetic fault", "SIGKILL": "killed, often by the kernel's out-of-memory killer",
           "SIGTERM": "terminated"}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def died_by_signal(returncode: int | None) -> int | None:
    """The signal number a subprocess exit status stands for (Popen's negative codes), else None."""
    return -returncode if returncode is not None and returncode < 0 else None


def note(doing: str, file: str | None = None) -> None:
    """Record what native code is about to do, for the watching parent (a no-op when no parent watches)."""
    path = os.environ.get(NOTE_ENV)
    if not path:
        return
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps({"doing": doing, "file": file}), encoding="utf-8")


@contextlib.contextmanager
def watched_child_env():
    """The environment for a child whose crash this process will report, and a reader for what it noted."""
    fd, path = tempfile.mkstemp(prefix="qlora-kit-crash-", suffix=".json")
    os.close(fd)
    env = {**os.environ, NOTE_ENV: path, SUPERVISED_ENV: "1"}

    def read() -> dict:
        try:
            return json.loads(Path(path).read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    try:
        yield env, read
    finally:
        Path(path).unlink(missing_ok=True)


# What to do next, by stage; the llama.cpp variant where the crash was inside llama.cpp (the note says so).
NEXT_STEP = {"export": "the files already finished are kept"}
NEXT_STEP_LLAMA = {
    "export": "the files already finished are kept; `--no-verify` writes GGUF files without running llama.cpp",
    "eval": "`--systems` without gguf:... evaluates the other systems",
    "chat": "an f16 export of the same model runs without llama.cpp's quantized kernels",
    "serve": "an f16 export of the same model runs without llama.cpp's quantized kernels",
}


def crash_message(stage: str, signum: int, noted: dict) -> str:
    """One line: the signal by name, the stage, the file, the next step."""
    name = signal_name(signum)
    doing = noted.get("doing") or ""
    where = f" while {doing} {noted['file']}" if noted.get("file") else f" while {doing}" if doing else ""
    meaning = f" ({MEANING[name]})" if name in MEANING else ""
    nxt = (NEXT_STEP_LLAMA if doing.startswith("llama.cpp") else NEXT_STEP).get(stage)
    return (f"the {stage} stage crashed in native code: {name}{meaning}{where}. "
            f"{nxt[0].upper() + nxt[1:] + '; ' if nxt else ''}"
            "`qlora-kit doctor` shows this machine's CPU features, versions and active workarounds for a bug report")


def crash_error(stage: str, returncode: int, noted: dict, prefix: str = ""):
    """The typed error for a child that died by a signal (NativeCrash, exit code 128 + signal)."""
    from qlora_kit.errors import NativeCrash

    signum = died_by_signal(returncode)
    return NativeCrash(prefix + crash_message(stage, signum, noted), signum)
