"""qlora-kit's own warnings, beside the one-line errors of `qlora_kit.errors` and in the same `qlora-kit: ...`
form."""

from __future__ import annotations

import sys


class QKWarning(UserWarning):
    """qlora-kit's own warnings: shown even while library warnings are silenced (see `qlora_kit.compat`)."""


def warn(message: str) -> None:
    """One warning line on stderr, in the form of the one-line errors."""
    print(f"qlora-kit: warning: {message}", file=sys.stderr, flush=True)
