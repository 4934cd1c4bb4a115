"""Where rows come from: local .jsonl/.json/.csv/.parquet files, the shipped `builtin:` datasets, Hub datasets.

Rows are read as plain dicts. Local JSONL is parsed line by line here (not through `datasets`) so a broken line
is reported with its line number, and `data check` can count every problem instead of stopping at the first.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from qlora_kit.errors import DataError

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
}


@dataclass
class Row:
    where: str  # "file.jsonl:12" or "hf:org/name[3]": names the row in every message about it
    value: object  # the parsed row (normally a dict); None for a line that was not valid JSON
    problem: str | None = None  # set when the row could not even be parsed


@dataclass
class Rows:
    origin: str
    rows: list[Row] = field(default_factory=list)


def check_source(spec: str, field_name: str) -> None:
    """Cheap existence checks for `validate` (no file parsing, no network)."""
    if spec.startswith("builtin:"):
        if spec[len("builtin:"):] not in BUILTIN_DATASETS:
            raise DataError(f"{field_name}: unknown built-in dataset {spec!r}; available: "
                            + ", ".join(f"builtin:{k}" for k in BUILTIN_DATASETS))
        return
    if spec.startswith("hf:"):
        if not spec[3:].strip():
            raise DataError(f"{field_name}: 'hf:' needs a dataset name, e.g. hf:ORG/NAME")
        return
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{field_name}: {spec}: no such file")
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


def _read_jsonl(path: Path, label: str) -> Rows:
    out = Rows(label)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue  # blank lines are not rows (a trailing newline is common)
            where = f"{label}:{lineno}"
            try:
                out.rows.append(Row(where, json.loads(line.rstrip("\r\n"))))
            except json.JSONDecodeError as exc:
                out.rows.append(Row(where, None, f"bad JSON ({exc.msg} at column {exc.colno})"))
    return out


def _read_json(path: Path, label: str) -> Rows:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{label}:{exc.lineno}: bad JSON ({exc.msg}); a .json file must hold one list of rows "
                        "(use .jsonl for one row per line)") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{label}: a .json dataset must be a list of rows (or {{\"data\": [...]}}), "
                        f"not a {type(data).__name__}")
    return Rows(label, [Row(f"{label}[{i}]", row) for i, row in enumerate(data)])


def _read_csv(path: Path, label: str) -> Rows:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        # Line numbers count the header as line 1, as an editor shows them.
        return Rows(label, [Row(f"{label}:{i + 2}", dict(row)) for i, row in enumerate(reader)])


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

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{field_name}: cannot load Hub dataset {name!r} split {split!r}: {first}") from None
    return Rows(f"hf:{name}", [Row(f"hf:{name}[{i}]", row) for i, row in enumerate(ds)])
