"""Where rows come from: local .jsonl/.json/.csv/.parquet files, the shipped `builtin:` datasets, Hub datasets.

Rows are read as plain dicts. Local JSONL is parsed line by line here (not through `datasets`) so a broken line
is reported with its line number, and `data check` can count every problem instead of stopping at the first.

Text is never changed silently: bytes that are not UTF-8 make their row a problem (file:line and byte offset),
like broken JSON, instead of being replaced by U+FFFD. A UTF-8 byte-order mark (Windows editors write one) is
dropped, as Python's utf-8-sig codec does.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from qlora_kit.errors import DataError, first_line
from qlora_kit.recipe.registry import did_you_mean

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_DATASETS = {
    "tiny-chat": ASSETS / "tiny_chat.jsonl",
    # The embedded demo (assets/build_tiny_demo.py): chats + reviews; held-out reviews name places training never does.
    "tiny-demo": ASSETS / "tiny_demo.jsonl",
    "tiny-demo-heldout": ASSETS / "tiny_demo_heldout.jsonl",
    # Date normalisation for the real-model demo (assets/build_iso_dates.py); no held-out date is a training date.
    "iso-dates": ASSETS / "iso_dates_train.jsonl",
    "iso-dates-eval": ASSETS / "iso_dates_eval.jsonl",
    # Preference pairs for the real-model DPO demo (assets/build_short_answers.py): the bare answer over the base's
    # sentence; no held-out question is a training question.
    "short-answers": ASSETS / "short_answers_train.jsonl",
    "short-answers-eval": ASSETS / "short_answers_eval.jsonl",
    # Function calling in OpenAI's format (assets/build_tool_calls.py): calls, call-result-answer and no-tool rows
    # over four tools; no held-out argument value is a training one.
    "tool-calls": ASSETS / "tool_calls_train.jsonl",
    "tool-calls-eval": ASSETS / "tool_calls_eval.jsonl",
    # Small preference sets for the tiny model and fast tests (assets/build_tiny_prefs.py): pairs, unpaired feedback.
    "tiny-prefs": ASSETS / "tiny_prefs.jsonl",
    "tiny-kto": ASSETS / "tiny_kto.jsonl",
}


@dataclass
class Row:
    where: str  # "file.jsonl:12" or "hf:org/name[3]": names the row in every message about it
    value: object  # the parsed row (normally a dict); None for a line that was not valid JSON
    problem: str | None = None  # set when the row could not even be parsed
    kind: str = "bad_json"  # the problem's kind (data.formats.PROBLEM_KINDS): bad_json or bad_utf8


@dataclass
class Rows:
    origin: str
    rows: list[Row] = field(default_factory=list)


def check_source(spec: str, field_name: str) -> None:
    """Cheap existence checks for `validate` (no file parsing, no network)."""
    if spec.startswith("builtin:"):
        if spec[len("builtin:"):] not in BUILTIN_DATASETS:
            names = [f"builtin:{k}" for k in BUILTIN_DATASETS]
            raise DataError(f"{field_name}: unknown built-in dataset {spec!r}; available: {', '.join(names)}"
                            f"{did_you_mean(spec, names)}")
        return
    if spec.startswith("hf:"):
        if not spec[3:].strip():
            raise DataError(f"{field_name}: 'hf:' needs a dataset name, e.g. hf:ORG/NAME")
        return
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{field_name}: {spec}: no such file" + ("" if path.is_absolute() else
                        f" (relative paths are read from the current directory, {Path.cwd()})"))
    if not path.is_file():
        raise DataError(f"{field_name}: {spec}: not a file")
    if path.suffix.lower() not in LOCAL_SUFFIXES:
        raise DataError(f"{field_name}: {spec}: unsupported file type {path.suffix or '(none)'}; "
                        f"use one of {', '.join(LOCAL_SUFFIXES)}, or hf:ORG/NAME for a Hub dataset")
    if path.stat().st_size == 0:
        raise DataError(f"{field_name}: {spec}: the file is empty")


def read_rows(spec: str, field_name: str, split: str = "train") -> Rows:
    check_source(spec, field_name)
    if spec.startswith("builtin:"):
        return _read_jsonl(BUILTIN_DATASETS[spec[len("builtin:"):]], label=spec)
    if spec.startswith("hf:"):
        return _read_hub(spec[3:], split, field_name)
    path = Path(spec)
    suffix = path.suffix.lower()
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}[suffix]
    rows = reader(path, label=spec)
    if not rows.rows:
        raise DataError(f"{field_name}: {spec}: no rows")
    return rows


# One lone surrogate per byte that is not UTF-8, as the surrogateescape error handler decodes it.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
NEWLINE = b"\n"


def not_utf8(offset: int, data: bytes | None = None) -> str:
    """The problem text for a byte that is not UTF-8; with the file's bytes, its line too (for .json rows)."""
    where = f"byte offset {offset}"
    if data is not None:
        where = f"line {data.count(NEWLINE, 0, offset) + 1}, {where}"
    return f"not valid UTF-8 (at {where}); re-save the file as UTF-8"


def _decode(data: bytes) -> tuple[str, list[int]]:
    """Text with a leading BOM dropped, and the file offsets of the bytes that are not UTF-8.

    surrogateescape turns each such byte into one lone surrogate (U+DC80..U+DCFF), so the rows holding them can
    be found after parsing and matched, in file order, with these offsets."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    text = data[start:].decode("utf-8", errors="surrogateescape")
    bad, pos, last = [], start, 0
    for m in _ESCAPED_BYTE.finditer(text):
        pos += len(text[last:m.start()].encode("utf-8", errors="surrogateescape"))
        bad.append(pos)
        last = m.start()
    return text, bad


def _escaped_bytes(value: object) -> int:
    """How many undecodable bytes (lone surrogates from `_decode`) a parsed row holds, keys included."""
    if isinstance(value, str):
        return len(_ESCAPED_BYTE.findall(value))
    if isinstance(value, dict):
        return sum(_escaped_bytes(k) + _escaped_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_escaped_bytes(v) for v in value)
    return 0


def _mark_bad_bytes(rows: list[Row], bad: list[int], data: bytes, label: str) -> None:
    """Turn rows holding undecodable bytes into bad_utf8 problems, naming the first such byte of each."""
    i = 0
    for row in rows:
        n = _escaped_bytes(row.value)
        if n:
            row.value, row.kind = None, "bad_utf8"
            row.problem = not_utf8(bad[i], data)
            i += n
    if i != len(bad):  # a bad byte outside every row (a key of the {"data": ...} wrapper, a CSV header)
        raise DataError(f"{label}: {not_utf8(bad[i], data)}")


def _read_jsonl(path: Path, label: str) -> Rows:
    out = Rows(label)
    offset = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            start = len(codecs.BOM_UTF8) if lineno == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            line_offset, offset = offset, offset + len(raw)
            where = f"{label}:{lineno}"
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as exc:
                out.rows.append(Row(where, None, not_utf8(line_offset + start + exc.start), "bad_utf8"))
                continue
            if not line.strip():
                continue  # blank lines are not rows (a trailing newline is common)
            try:
                out.rows.append(Row(where, json.loads(line.rstrip("\r\n"))))
            except json.JSONDecodeError as exc:
                out.rows.append(Row(where, None, f"bad JSON ({exc.msg} at column {exc.colno})"))
    return out


def _read_json(path: Path, label: str) -> Rows:
    raw = path.read_bytes()
    text, bad = _decode(raw)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if bad:  # the undecodable byte is what broke the JSON: say that
            raise DataError(f"{label}: {not_utf8(bad[0], raw)}") from None
        raise DataError(f"{label}:{exc.lineno}: bad JSON ({exc.msg}); a .json file must hold one list of rows "
                        "(use .jsonl for one row per line)") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{label}: a .json dataset must be a list of rows (or {{\"data\": [...]}}), "
                        f"not a {type(data).__name__}")
    rows = [Row(f"{label}[{i}]", row) for i, row in enumerate(data)]
    _mark_bad_bytes(rows, bad, raw, label)
    return Rows(label, rows)


def _read_csv(path: Path, label: str) -> Rows:
    raw = path.read_bytes()
    text, bad = _decode(raw)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    # Line numbers count the header as line 1, as an editor shows them.
    rows = [Row(f"{label}:{i + 2}", dict(row)) for i, row in enumerate(reader)]
    if bad and _escaped_bytes(reader.fieldnames or []):
        raise DataError(f"{label}:1: {not_utf8(bad[0])} (in the header)")
    _mark_bad_bytes(rows, bad, raw, label)
    return Rows(label, rows)


def _read_parquet(path: Path, label: str) -> Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{label}: cannot read parquet file ({exc})") from None
    return Rows(label, [Row(f"{label}[{i}]", row) for i, row in enumerate(table.to_pylist())])


def _read_hub(name: str, split: str, field_name: str) -> Rows:
    # The user asked for a Hub dataset by name: this is the one place data may come over the network.
    import datasets

    from qlora_kit.model.hub import require
    from qlora_kit.runtime.compat import no_datasets_progress_bars

    # Not cached and no network: one line at once, not five retries first.
    require(name, field_name, repo_type="dataset", what=f"{name!r} split {split!r}")

    no_datasets_progress_bars()
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(f"{field_name}: cannot load Hub dataset {name!r} split {split!r}: "
                        f"{first_line(exc, type(exc).__name__)}") from None
    return Rows(f"hf:{name}", [Row(f"hf:{name}[{i}]", row) for i, row in enumerate(ds)])
