"""The `qlora-kit` console entry point: one parser, one module per subcommand.

Subcommand modules import only argparse and light qlora_kit modules at top level; heavy libraries are imported
inside their `run` functions, so `--help` and `validate` stay fast. Every QKError becomes one line on stderr and
its documented exit code; a traceback is printed only with --debug.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback

from qlora_kit import __version__
from qlora_kit.compat import quiet_libraries
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
    from qlora_kit.native.supervise import should_watch, watch

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


def add_event_args(parser: argparse.ArgumentParser) -> None:
    """--events, --hook, --no-plugins, --strict-plugins: how other programs follow a command (see qlora_kit.hooks)."""
    parser.add_argument("--events", metavar="FILE|-",
                        help="also write every event as a JSON line to FILE; '-' writes them to stdout (only them: "
                             "human output moves to stderr)")
    parser.add_argument("--hook", dest="hooks", action="append", default=[], metavar="MODULE:ATTR",
                        help="call this hook (an object with on_event, or a class) for every event (repeatable)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-plugins", action="store_true",
                       help="do not load hooks of installed packages (entry points 'qlora_kit.hooks')")
    group.add_argument("--strict-plugins", action="store_true",
                       help="a plugin hook that fails to load is an error, not a warning")


@contextlib.contextmanager
def event_log(args):
    """The command's EventLog (sinks and hooks from the flags) and the plugin warnings still to emit. A QKError
    raised inside (a bad --hook or plugin included) is reported into it as an `error` event.
    `--events -`: stdout's file descriptor is kept for events alone and fd 1 is pointed at stderr, so every other
    write to stdout (ours, the libraries', native code's, child processes') lands on stderr."""
    from qlora_kit.api import add_hooks
    from qlora_kit.errors import UsageError
    from qlora_kit.eventlog import EventLog
    from qlora_kit.hooks import load_hook_spec

    stream, saved = None, None
    if args.events == "-":
        sys.stdout.flush()
        saved = os.dup(1)
        stream = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        os.dup2(2, 1)
    elif args.events:
        try:
            stream = open(args.events, "a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise UsageError(f"--events {args.events}: cannot write: {exc.strerror or exc}") from None
    log = EventLog(sinks=[stream] if stream is not None else [])
    try:
        hooks = [load_hook_spec(spec) for spec in args.hooks]
        yield log, add_hooks(log, hooks, plugins=not args.no_plugins, strict_plugins=args.strict_plugins)
    except QKError as exc:
        if not getattr(exc, "reported", False):
            log.emit("error", kind=exc.kind, message=str(exc), exit_code=exc.exit_code)
            exc.reported = True
        raise
    finally:
        if stream is not None:
            stream.close()
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to a YAML recipe (see recipes/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, e.g. --set train.lr=1e-4 (repeatable)")
