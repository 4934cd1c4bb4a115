"""What every subcommand shares: the recipe arguments, the event flags (--events, --hook, --no-plugins,
--strict-plugins) and the EventLog they describe. Apart from cli/__init__.py (the parser and `main`), so the
subcommand modules it loads do not import it back."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from qlora_kit.errors import QKError


def add_event_args(parser: argparse.ArgumentParser) -> None:
    """--events, --hook, --no-plugins, --strict-plugins: how other programs follow a command (see qlora_kit.hooks)."""
    parser.add_argument("--events", metavar="FILE|-",
                        help="also write every event as a JSON line to FILE; '-' writes them to stdout (only them: "
                             "human output moves to stderr) (default: none)")
    parser.add_argument("--hook", dest="hooks", action="append", default=[], metavar="MODULE:ATTR",
                        help="call this hook (an object with on_event, or a class) for every event (repeatable; "
                             "default: none)")
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
        log.report_error(exc)
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
                        help="override a recipe field, the value read as YAML, e.g. --set train.lr=1e-4 (repeatable; "
                             "default: none)")
