"""The `qlora-kit` console entry point: one parser, one module per subcommand.

Subcommand modules import only argparse and light qlora_kit modules at top level; heavy libraries are imported
inside their `run` functions, so `--help` and `validate` stay fast. Every QKError becomes one line on stderr and
its documented exit code; a traceback is printed only with --debug.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from qlora_kit import __version__
from qlora_kit.runtime.compat import quiet_libraries
from qlora_kit.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, QKError, RecipeError, first_line

# Each module exposes register(subparsers, common) and sets `func` on its parser.
_SUBCOMMANDS = ("train", "validate", "data", "merge", "export", "eval", "chat", "serve", "server", "bench", "plan",
                "doctor", "schema", "events_schema")
EXIT_CODES = ("Exit codes: 0 ok, 1 a stage failed, 2 bad command/recipe/input, 3 out of memory, 130 interrupted "
              "(SIGINT/STOP file; resume with --resume), 143 terminated (SIGTERM; resume with --resume), 128+N a stage "
              "died by signal N in native code (139 SIGSEGV, 134 SIGABRT; the line names it).")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print full tracebacks and library warnings")
    parser = argparse.ArgumentParser(
        prog="qlora-kit", parents=[common],
        description="Recipe-driven QLoRA fine-tuning on Unsloth + bitsandbytes.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"qlora-kit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib

    for name in _SUBCOMMANDS:
        importlib.import_module(f"qlora_kit.cli.{name}").register(subparsers, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    if not debug:
        quiet_libraries()
    from qlora_kit.cli.supervise import should_watch, watch

    if should_watch(args, argv):
        return watch(args)
    try:
        return int(args.func(args) or 0)
    except QKError as exc:
        _report(exc, debug)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qlora-kit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # anything unexpected: still one line, with the way to get more
        if debug:
            traceback.print_exc()
        print(f"qlora-kit: internal error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return EXIT_RUNTIME


def _report(exc: QKError, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    if isinstance(exc, RecipeError) and len(exc.problems) > 1:
        print(f"qlora-kit: error: {exc.source}: {len(exc.problems)} problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
    else:
        print(f"qlora-kit: error: {exc}", file=sys.stderr)
