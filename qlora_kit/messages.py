"""One-line messages for the user, beside the one-line errors of `qlora_kit.errors`: an exception's first line,
and warnings in the same `qlora-kit: ...` form."""

from __future__ import annotations

import sys


class QKWarning(UserWarning):
    """qlora-kit's own warnings: shown even while library warnings are silenced (see `qlora_kit.compat`)."""


def first_line(exc: BaseException, default: str = "") -> str:
    """The first non-empty line of an exception's message (libraries put dumps and hints after it)."""
    return (str(exc).strip().splitlines() or [default])[0]


def warn(message: str) -> None:
    """One warning line on stderr, in the form of the one-line errors."""
    print(f"qlora-kit: warning: {message}", file=sys.stderr, flush=True)
