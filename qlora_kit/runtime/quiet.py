"""Keep the libraries' chatter out of a host program while `qk.train` runs in its process, and undo it after.

The CLI owns its process and quietens it once for good (`compat.quiet_libraries`). A host program (UI, notebook,
agent) owns its process, so `library_output_hidden` changes as little as it can, only while a call runs, and puts
everything back when the last such call returns:
- sys.stdout / sys.stderr: what the *calling thread* writes is dropped: Unsloth's print()ed banner, tqdm bars
  such as transformers' "Loading weights", records of library loggers whose handler writes to sys.stderr. Still
  shown: lines in qlora-kit's own form ("qlora-kit: warning: ..."), the warnings the filters below let through,
  and whatever the host's own code (hooks, console) writes. Other threads write as before. The original streams
  come back afterwards (a wrapper the host or a library kept a reference to then only forwards).
- logging: the libraries' loggers (compat.LIBRARY_MODULES) at ERROR during the call, since a handler made when a
  library was imported holds the real stderr; each is put back to its level (unless the library, imported during
  the call, set its own).
- warnings: the filters of `quiet_libraries`, inserted for the call and removed afterwards (the host's filters
  stay); warnings that pass them are shown, through the host's `warnings.showwarning`.
Environment variables are left alone: libraries read them once, at import, so a change would outlive the call.
Not covered: what native code writes to file descriptors 1 and 2 directly (redirecting those would silence every
thread of the host). QLORA_KIT_LOG=verbose (or `verbose=True`) turns all of this off.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from typing import Callable, Iterator

from qlora_kit.runtime.compat import LIBRARY_MODULES, library_warning_filters

OURS = "qlora-kit: "  # the first words of every line qlora-kit itself prints
STREAMS = ("stdout", "stderr")
_LOCK = threading.RLock()
_QUIET: dict[int, int] = {}  # thread ident -> how many quiet calls it is inside
_LOCAL = threading.local()  # .passing: >0 while host code or a shown warning writes
_SAVED: dict = {}  # what the first quiet call changed, for the last one to restore


class _ThreadFilter:
    """Stands in for sys.stdout/sys.stderr: threads in a quiet call lose their writes, bar qlora-kit's own lines."""

    def __init__(self, target):
        self._target = target
        self._lines: dict[int, list] = {}  # thread -> [keep this line? (None: undecided), text held until decided]

    def write(self, text: str) -> int:
        ident = threading.get_ident()
        if ident not in _QUIET or getattr(_LOCAL, "passing", 0):
            return self._target.write(text)
        kept = self._keep(self._lines.setdefault(ident, [None, ""]), text)
        if kept:
            self._target.write(kept)
        return len(text)

    @staticmethod
    def _keep(state: list, text: str) -> str:
        """What of `text` to write: the lines that start with OURS. A line's start is held until it decides."""
        kept, parts = [], text.split("\n")
        decision, held = state
        for i, part in enumerate(parts):
            ends = i < len(parts) - 1  # a newline follows this part
            if decision is None:
                held += part
                if held.startswith(OURS):
                    kept.append(held)
                    decision, held = True, ""
                elif ends or not OURS.startswith(held):
                    decision, held = False, ""
            elif decision:
                kept.append(part)
            if ends:
                kept.append("\n" if decision else "")
                decision, held = None, ""
        state[:] = [decision, held]
        return "".join(kept)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def forget(self, ident: int) -> None:
        self._lines.pop(ident, None)

    def flush(self) -> None:
        self._target.flush()

    def __getattr__(self, name):  # encoding, isatty, fileno, ...: the real stream's
        return getattr(self._target, name)


def shown(fn: Callable) -> Callable:
    """`fn` with its output let through a quiet call (the host's hooks and console run on the quiet thread)."""
    def call(*args, **kwargs):
        _LOCAL.passing = getattr(_LOCAL, "passing", 0) + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _LOCAL.passing -= 1

    call.__wrapped__ = fn
    return call


@contextlib.contextmanager
def library_output_hidden(hide: bool = True) -> Iterator[None]:
    """While the block runs on this thread, the libraries' output stays out of the host's streams (see above)."""
    if not hide:
        yield
        return
    ident = threading.get_ident()
    with _LOCK:
        if not _QUIET:
            _install()
        _QUIET[ident] = _QUIET.get(ident, 0) + 1
    try:
        yield
    finally:
        with _LOCK:
            _QUIET[ident] -= 1
            if not _QUIET[ident]:
                del _QUIET[ident]
                for name in STREAMS:
                    stream = getattr(sys, name)
                    if isinstance(stream, _ThreadFilter):
                        stream.forget(ident)
            if not _QUIET:
                _uninstall()


def _install() -> None:
    for name in STREAMS:
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ThreadFilter):
            setattr(sys, name, _ThreadFilter(stream))
    levels = {}
    for name in LIBRARY_MODULES:
        logger = logging.getLogger(name)
        levels[name] = logger.level
        if logger.getEffectiveLevel() < logging.ERROR:
            logger.setLevel(logging.ERROR)
    filters = library_warning_filters()
    warnings.filters[:0] = filters  # not filterwarnings: it would move the host's equal entries to the front
    _mutated()
    _SAVED.update(levels=levels, filters=filters, showwarning=warnings.showwarning)
    warnings.showwarning = shown(warnings.showwarning)


def _mutated() -> None:
    """What filterwarnings calls after changing the list: the decisions cached per warning are made again."""
    getattr(warnings, "_filters_mutated", lambda: None)()


def _uninstall() -> None:
    for name in STREAMS:
        stream = getattr(sys, name)
        if isinstance(stream, _ThreadFilter):  # the host may have replaced it meanwhile: then leave theirs
            setattr(sys, name, stream._target)
    for name, level in _SAVED.pop("levels", {}).items():
        logger = logging.getLogger(name)
        if logger.level == logging.ERROR:  # else the library set its own level when it was imported during the call
            logger.setLevel(level)
    ours = _SAVED.pop("filters", [])
    warnings.filters[:] = [f for f in warnings.filters if not any(f is o for o in ours)]  # these objects only
    _mutated()
    if getattr(warnings.showwarning, "__wrapped__", None) is _SAVED.get("showwarning"):
        warnings.showwarning = _SAVED.pop("showwarning")
