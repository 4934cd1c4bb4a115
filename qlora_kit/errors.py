"""User-facing errors and the exit codes they map to.

Exit codes (documented in the README):
  0    success
  1    a stage failed while running (training crashed, disk full, ...)
  2    the command, the recipe or an input it names is wrong (fix it and rerun)
  130  interrupted with Ctrl-C; a checkpoint was saved and `--resume` continues
Anything raised as a QKError is printed as one line, without a traceback (unless --debug).
"""

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class QKError(Exception):
    """A failure to report as one line. `exit_code` says which kind it is."""

    exit_code = EXIT_RUNTIME


class UsageError(QKError):
    """The command line, the recipe or an input file is wrong."""

    exit_code = EXIT_USAGE


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


class StageError(QKError):
    """A pipeline stage failed at run time."""
