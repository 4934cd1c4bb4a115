"""The data stage: rows -> validated examples -> train/eval splits -> token ids + labels (truncated, packed).

`load_examples` is pure Python (no tokenizer): `train` calls it before importing Unsloth so a broken row fails in
a second, not after loading a model. `encode_split` needs the tokenizer.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from qlora_kit.data.encode import Encoded, encode_example, pack, truncate
from qlora_kit.data.formats import Example, Format, RowProblem, convert_row, detect_format, get_format
from qlora_kit.data.sources import Rows, read_rows
from qlora_kit.errors import DataError
from qlora_kit.errors import warn
from qlora_kit.recipe.schema import DataSection


@dataclass
class Problem:
    where: str
    kind: str
    detail: str


@dataclass
class Examples:
    origin: str
    format: Format
    detected: bool
    items: list[tuple[str, Example]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    total_rows: int = 0


def rename_columns(rows: Rows, columns: dict[str, str]) -> Rows:
    """data.columns: the file's names -> the format's (a row missing one is then named by the format's check)."""
    if not columns:
        return rows
    back = {theirs: ours for ours, theirs in columns.items()}
    for row in rows.rows:
        if isinstance(row.value, dict):
            row.value = {back.get(k, k): v for k, v in row.value.items()}
    return rows


def convert_rows(rows: Rows, format_name: str, columns: dict[str, str] | None = None, method: str | None = None
                 ) -> Examples:
    """Convert every row, collecting problems (never stopping at the first). GRPO rows (method grpo) are prompts
    with their graders' fields (data/prompts.py), whatever format their columns look like."""
    rows = rename_columns(rows, columns or {})
    if method == "grpo":
        return _convert_prompt_rows(rows)
    first = next((r for r in rows.rows if r.problem is None), None)
    if first is None:
        fmt, detected = (get_format(format_name) if format_name != "auto" else None), False
        if fmt is None:
            raise DataError(f"{rows.origin}: no row could be parsed (first problem: {rows.rows[0].where}: "
                            f"{rows.rows[0].problem})")
    elif format_name == "auto":
        fmt, detected = detect_format(first.value, first.where), True
    else:
        fmt, detected = get_format(format_name), False
    out = Examples(rows.origin, fmt, detected, total_rows=len(rows.rows))
    for row in rows.rows:
        if row.problem is not None:
            out.problems.append(Problem(row.where, row.kind, row.problem))
            continue
        try:
            out.items.append((row.where, convert_row(fmt, row.value)))
        except RowProblem as p:
            out.problems.append(Problem(row.where, p.kind, p.detail))
    return out


def _convert_prompt_rows(rows: Rows) -> Examples:
    from qlora_kit.data.prompts import prompt_example

    first = next((r.value for r in rows.rows if r.problem is None and isinstance(r.value, dict)), {})
    out = Examples(rows.origin, get_format("openai" if "messages" in first else "prompt_completion"), True,
                   total_rows=len(rows.rows))
    for row in rows.rows:
        try:
            if row.problem is not None:
                raise RowProblem(row.kind, row.problem)
            out.items.append((row.where, prompt_example(row.value)))
        except RowProblem as p:
            out.problems.append(Problem(row.where, p.kind, p.detail))
    return out


def add_system_prompt(example: Example, system_prompt: str | None) -> Example:
    if not system_prompt or example.messages is None or example.messages[0]["role"] == "system":
        return example
    # replace, not a new Example: a preference row keeps its answers and label
    return dataclasses.replace(example, messages=[{"role": "system", "content": system_prompt}] + example.messages)


def load_examples(cfg: DataSection, seed: int, notes: list[str] | None = None, method: str | None = None
                  ) -> tuple[list[tuple[str, Example]], list[tuple[str, Example]], str]:
    """Read and validate rows; return (train, eval, format name). Raises DataError on the first bad row, unless
    data.on_bad_rows is skip: then such rows are dropped, and said so on stderr and in `notes` (run events).
    With `method` (train.method), rows of the wrong kind for it are a DataError too."""
    train = _strict(convert_rows(read_rows(cfg.path, "data.path", cfg.split), cfg.format, cfg.columns, method),
                    cfg.on_bad_rows, notes)
    held = None
    if cfg.eval_path:
        held = _strict(convert_rows(read_rows(cfg.eval_path, "data.eval_path", cfg.split), cfg.format, cfg.columns,
                                    method), cfg.on_bad_rows, notes)
    items, eval_items = split_examples(train, held, cfg, seed)
    if method is not None:
        mismatch = method_mismatch(method, {e.kind for _, e in items + eval_items}, train.format.name)
        if mismatch:
            raise DataError(mismatch)
    return items, eval_items, train.format.name


PAIR_METHODS = ("dpo", "orpo", "simpo")


def method_mismatch(method: str, kinds: set[str], fmt: str) -> str | None:
    """Why rows of these kinds cannot train with train.method (None: they can). `train` and `data check` ask this."""
    if method == "grpo":  # GRPO reads conversations as prompts (data/prompts.py); preference rows are not prompts
        return None if kinds <= {"prompt", "sft"} else (
            f"data.path: train.method grpo samples answers to prompts, but the rows are "
            f"{'preference pairs' if 'pair' in kinds else 'unpaired feedback'} (format {fmt}); give prompts "
            "({messages: [...]} rows with the fields the graders read), or set train.method: dpo")
    if "prompt" in kinds:
        return (f"data.path: the rows are prompts to answer, without answers to learn from (format {fmt}), but "
                f"train.method is {method}; set train.method: grpo (with grpo.graders), or give each row its answer")
    kind = "sft" if "sft" in kinds else "unpaired" if "unpaired" in kinds else "pair"
    if method == "sft" and kind != "sft":
        return (f"data.path: the rows are {'preference pairs' if kind == 'pair' else 'unpaired feedback'} (format "
                f"{fmt}), but train.method is sft; set train.method: {'dpo' if kind == 'pair' else 'kto'}")
    if method != "sft" and kind == "sft":
        return (f"data.path: train.method {method} trains on preference data, but the rows are format {fmt} "
                "(conversations to imitate); give {prompt, chosen, rejected} pairs" +
                (" or {prompt, completion, label} rows" if method == "kto" else "") + ", or set train.method: sft")
    if method in PAIR_METHODS and kind == "unpaired":
        return (f"data.path: train.method {method} needs pairs (prompt, chosen, rejected), but the rows are unpaired "
                "(prompt, completion, label); set train.method: kto")
    return None


def split_examples(train: Examples, held: Examples | None, cfg: DataSection, seed: int
                   ) -> tuple[list[tuple[str, Example]], list[tuple[str, Example]]]:
    """(training, held-out) items as `train` uses them; `data check` calls this too, so both count the same rows."""
    items = [(w, add_system_prompt(e, cfg.system_prompt)) for w, e in train.items]
    random.Random(seed).shuffle(items)
    if cfg.max_rows:
        items = items[: cfg.max_rows]
    if held is not None:
        return items, [(w, add_system_prompt(e, cfg.system_prompt)) for w, e in held.items]
    if cfg.eval_split > 0:
        n_eval = max(1, round(len(items) * cfg.eval_split))
        if n_eval >= len(items):
            raise DataError(f"data.eval_split: {cfg.eval_split} leaves no training rows out of {len(items)}")
        return items[n_eval:], items[:n_eval]
    return items, []


def _strict(examples: Examples, on_bad_rows: str = "error", notes: list[str] | None = None) -> Examples:
    if examples.problems and on_bad_rows == "skip":
        message = skipped_rows_note(examples)
        warn(message)
        if notes is not None:
            notes.append(message)
    elif examples.problems:
        p = examples.problems[0]
        more = f" (and {len(examples.problems) - 1} more; run `qlora-kit data check` to list them)" \
            if len(examples.problems) > 1 else ""
        raise DataError(f"{p.where}: {p.detail}{more}")
    if not examples.items:
        raise DataError(f"{examples.origin}: no rows")
    return examples


def skipped_rows_note(examples: Examples, listed: int = 10) -> str:
    """'data.on_bad_rows is skip: skipped N of M rows of FILE: where (detail), ...' naming the first `listed`."""
    shown = ", ".join(f"{p.where} ({p.detail})" for p in examples.problems[:listed])
    more = f" and {len(examples.problems) - listed} more" if len(examples.problems) > listed else ""
    return (f"data.on_bad_rows is skip: skipped {len(examples.problems)} of {examples.total_rows} rows of "
            f"{examples.origin}: {shown}{more}")


@dataclass
class EncodedSplit:
    rows: list[Encoded]
    truncated: int = 0
    dropped: int = 0  # rows left with no trained token (after truncation)

    @property
    def tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.rows)

    @property
    def trained_tokens(self) -> int:
        return sum(e.trained_tokens for e in self.rows)


def encode_split(tokenizer, items: list[tuple[str, Example]], train_on: str, max_len: int,
                 packing: bool = False, train_reasoning: bool = True) -> EncodedSplit:
    return keep_trainable([encode_example(tokenizer, e, train_on, w, train_reasoning) for w, e in items], max_len,
                          packing)


def encode_splits(recipe, tokenizer, train_items: list, eval_items: list) -> tuple:
    """The training and held-out rows as the recipe's method trains them: SFT rows (`EncodedSplit`, packed if asked)
    or preference rows (`data.preference.PreferenceSplit`; KTO unpairs pairs)."""
    d, max_len, method = recipe.data, recipe.model.max_seq_length, recipe.train.method
    if method == "grpo":
        from qlora_kit.data.prompts import encode_prompts

        n = recipe.grpo.max_completion_length
        return tuple(encode_prompts(tokenizer, items, max_len, n) for items in (train_items, eval_items))
    if method == "sft":
        return (encode_split(tokenizer, train_items, d.train_on, max_len, d.packing, d.train_reasoning),
                encode_split(tokenizer, eval_items, d.train_on, max_len, False, d.train_reasoning))
    from qlora_kit.data.preference import encode_preferences

    p = recipe.preference
    return tuple(encode_preferences(tokenizer, items, max_len, p.max_prompt_length, p.max_completion_length,
                                    unpair=method == "kto") for items in (train_items, eval_items))


def keep_trainable(encoded: list[Encoded], max_len: int, packing: bool = False) -> EncodedSplit:
    """Truncate to max_len and drop the rows left with no trained token (then pack, if asked)."""
    out = EncodedSplit([])
    for enc in encoded:
        enc = truncate(enc, max_len)
        out.truncated += enc.truncated
        if enc.trained_tokens == 0:
            out.dropped += 1
            continue
        out.rows.append(enc)
    if packing:
        out.rows = pack(out.rows, max_len)
    return out


def untrainable(split, rows: int) -> str | None:
    """Why `train` refuses these training rows (None: it trains them). `train` and `data check` both ask this."""
    if split.rows:
        return None
    return (f"data.path: no token would be trained in any of {rows} rows (all masked or truncated away); run "
            "`qlora-kit data check` to see the masking")
