"""User-facing errors (and warnings) and the exit codes they map to.

Exit codes (documented in docs/troubleshooting.md and `qlora-kit --help`):
  0    success
  1    a stage failed while running (training crashed, disk full, ...)
  2    the command, the recipe or an input it names is wrong (fix it and rerun)
  3    out of memory (CUDA OOM or CPU MemoryError); `qlora-kit plan` estimates what fits
  130  interrupted (Ctrl-C, a STOP file, a cancel): a checkpoint was saved and `--resume` continues
  143  terminated (SIGTERM): a checkpoint was saved and `--resume` continues
  128+N  a stage died by signal N in native code (139 SIGSEGV, 134 SIGABRT, 137 SIGKILL): reported in one line
       naming the signal, the stage and the file (qlora_kit/native/crash.py); files already finished are kept
Anything raised as a QKError is printed as one line, without a traceback (unless --debug). The Python API raises
the same classes; `kind` is what an `error` event reports (recipe | data | oom | disk | runtime).
"""

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_OOM = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class QKError(Exception):
    """A failure to report as one line. `exit_code` says which kind it is."""

    exit_code = EXIT_RUNTIME
    kind = "runtime"


class UsageError(QKError):
    """The command line, the recipe or an input file is wrong."""

    exit_code = EXIT_USAGE
    kind = "recipe"


class RecipeError(UsageError):
    """The recipe does not validate. `problems` holds every problem found, one line each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{source}: {problems[0]}")
        else:
            super().__init__(f"{source}: {len(problems)} problems: " + "; ".join(problems))


class DataError(UsageError):
    """The dataset is missing, malformed, or would train nothing."""

    kind = "data"


class StageError(QKError):
    """A pipeline stage failed at run time."""


class NativeCrash(StageError):
    """A stage's process died by a signal (llama.cpp, a CUDA driver, the OOM killer). Exit code 128 + the signal's
    number, as shells report a death by signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class DiskFullError(StageError):
    """The disk filled up (or has too little space for what a stage will write)."""

    kind = "disk"


class OutOfMemoryError(QKError):
    """The run needed more memory than the device has."""

    exit_code = EXIT_OOM
    kind = "oom"


# How PyTorch's CPU allocator and CUDA say that memory ran out (besides Python's MemoryError).
OOM_MARKERS = ("out of memory", "can't allocate memory")


def is_oom(exc: BaseException) -> bool:
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or any(marker in str(exc) for marker in OOM_MARKERS))


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of an exception's message (libraries put dumps and hints after it); `default` if empty."""
    return (str(exc).strip().splitlines() or [default])[0]


def error_for_kind(kind: str, message: str) -> QKError:
    """The QKError an `error` event's kind stands for (a child process's failure, re-raised in the host)."""
    cls = {"recipe": UsageError, "data": DataError, "oom": OutOfMemoryError, "disk": DiskFullError}.get(kind, StageError)
    return cls(message)


class QKWarning(UserWarning):
    """qlora-kit's own warnings: shown even while library warnings are silenced (see `qlora_kit.runtime.compat`)."""


def warn(message: str) -> None:
    """One warning line on stderr, in the form of the one-line errors."""
    import sys

    print(f"qlora-kit: warning: {message}", file=sys.stderr, flush=True)
