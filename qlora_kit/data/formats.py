"""Row formats, in a registry: each turns one raw row into an `Example` (a conversation or a plain text) or raises
`RowProblem` with a kind that `data check` counts (the OpenAI cookbook's checks plus ours).

Adding a format is one function plus one `@register(...)` line; `detect_format` tries them in registry order, which
is the order of the imports below: conversations (formats_chat), preferences (formats_preference; KTO's columns are
a superset of prompt/completion's), then prompt/completion and text (formats_plain).
"""

from __future__ import annotations

# Registration order is detection order.
from qlora_kit.data import formats_chat, formats_preference, formats_plain  # noqa: F401
from qlora_kit.data.example import (FORMATS, OPENAI_MESSAGE_KEYS, PROBLEM_KINDS, ROLES, Example, Format,  # noqa: F401
                                    RowProblem, _text, register)
from qlora_kit.errors import DataError


def detect_format(row: object, where: str) -> Format:
    if isinstance(row, dict):
        for fmt in FORMATS.load_plugins().values():
            if all(c in row for c in fmt.columns):
                return fmt
        cols = ", ".join(sorted(map(str, row))) or "none"
    else:
        cols = f"a {type(row).__name__}, not an object"
    expected = "; ".join(f"{'/'.join(f.columns)} ({f.name})" for f in FORMATS.values())
    raise DataError(f"{where}: cannot tell the data format from the columns ({cols}); expected one of: {expected}. "
                    "Rename the columns, map them with data.columns (e.g. {prompt: question}), or set data.format")


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise DataError(f"data.format: unknown format {name!r}; available: {', '.join(FORMATS)}")
    return FORMATS[name]


def convert_row(fmt: Format, row: object) -> Example:
    if not isinstance(row, dict) or not row or all(v is None or v == "" for v in row.values()):
        raise RowProblem("empty_row", "the row is empty" if isinstance(row, dict) or row is None
                         else f"a row must be an object, not a {type(row).__name__}")
    missing = [c for c in fmt.columns if c not in row]
    if missing:
        raise RowProblem("wrong_columns", f"missing column(s) {', '.join(missing)} for format {fmt.name} "
                         f"(row has: {', '.join(sorted(map(str, row)))})")
    return fmt.convert(row)
