"""`qlora-kit data check`: what the OpenAI cookbook's fine-tuning data check prints, and more.

Per-kind format error counts with the first rows that have them, conversation shape (missing system/user
messages, messages per example), token lengths (min/mean/p95/max), rows over max_seq_length, rows left with
nothing to train, total training tokens x epochs, and a masking preview of one sample showing exactly which tokens
the loss is computed on. Uses only the tokenizer (no model, no Unsloth).

The rows are split as `train` splits them (data.max_rows, data.eval_split or data.eval_path): the statistics are of
the training rows, and `train`'s own rule (`prepare.untrainable`) says whether it would refuse them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qlora_kit.data.encode import Encoded, apply_chat_template_choice, encode_example
from qlora_kit.data.formats import PROBLEM_KINDS
from qlora_kit.data.preview import masking_preview, stats
from qlora_kit.data.prepare import convert_rows, keep_trainable, method_mismatch, split_examples, untrainable
from qlora_kit.data.sources import read_rows
from qlora_kit.recipe.schema import Recipe


@dataclass
class CheckReport:
    sources: list[str]
    format: str
    format_detected: bool
    rows: int  # data.path's rows; the held-out file's are counted apart (eval_rows)
    valid: int
    eval_rows: int = 0  # data.eval_path's rows read, and how many of them are valid
    eval_valid: int = 0
    train_rows: int = 0  # after data.max_rows and data.eval_split, as `train` splits them
    held_out_rows: int = 0
    held_out_from: str = ""  # data.eval_path, data.eval_split, or "" (none)
    problems: dict[str, dict] = field(default_factory=dict)  # kind -> {count, label, first: [where: detail]}
    missing_system: int = 0
    missing_user: int = 0
    messages_per_example: dict = field(default_factory=dict)
    chat_template: str = ""
    max_seq_length: int = 0
    tokens_per_example: dict = field(default_factory=dict)
    trained_tokens_per_example: dict = field(default_factory=dict)
    over_max_length: int = 0
    nothing_to_train: int = 0
    total_tokens: int = 0
    total_trained_tokens: int = 0
    epochs: float = 1.0
    max_steps: int | None = None
    preview: list[tuple[str, bool]] = field(default_factory=list)  # (text piece, trained?)
    preview_row: str = ""
    method: str = "sft"  # train.method
    preference: dict = field(default_factory=dict)  # preference methods' numbers (data/check_preference.py)
    preview_rejected: list[tuple[str, bool]] = field(default_factory=list)  # a pair's other answer
    on_bad_rows: str = "error"
    tool_rows: int = 0  # rows with tools, tool calls or tool results (issue #27)
    tool_calls: int = 0  # assistant calls in them
    reasoning_rows: int = 0  # rows with an assistant turn that thinks (reasoning_content or <think>)
    train_reasoning: bool = True  # data.train_reasoning
    refusal: str | None = None  # why `train` would refuse this data (besides the rows with problems)

    @property
    def ok(self) -> bool:
        return (not self.problems or self.on_bad_rows == "skip") and self.refusal is None


def check(recipe: Recipe, tokenizer) -> CheckReport:
    """Statistics of the rows `train` would train on (held-out rows counted apart), and whether it would refuse."""
    d = recipe.data
    method = recipe.train.method
    train = convert_rows(read_rows(d.path, "data.path", d.split), d.format, d.columns, method)
    held = convert_rows(read_rows(d.eval_path, "data.eval_path", d.split), d.format, d.columns, method) \
        if d.eval_path else None
    converted = [train] + ([held] if held else [])
    report = CheckReport(sources=[c.origin for c in converted], format=train.format.name,
                         format_detected=train.detected, rows=train.total_rows, valid=len(train.items),
                         eval_rows=held.total_rows if held else 0, eval_valid=len(held.items) if held else 0,
                         held_out_from="data.eval_path" if held else "data.eval_split" if d.eval_split else "",
                         max_seq_length=recipe.model.max_seq_length, epochs=recipe.train.epochs,
                         max_steps=recipe.train.max_steps, on_bad_rows=d.on_bad_rows, method=recipe.train.method)
    for c in converted:
        for p in c.problems:
            entry = report.problems.setdefault(p.kind, {"label": PROBLEM_KINDS[p.kind], "count": 0, "first": []})
            entry["count"] += 1
            if len(entry["first"]) < 3:
                entry["first"].append(f"{p.where}: {p.detail}")
    empty = next((c for c in converted if not c.items), None)
    if empty is not None:  # what `train` says once the rows with problems are skipped
        _token_stats(report, [], recipe.model.max_seq_length)
        report.refusal = f"{empty.origin}: no rows"
        return report
    items, held_items = split_examples(train, held, d, recipe.train.seed)
    report.train_rows, report.held_out_rows = len(items), len(held_items)
    chats = [e.messages for _, e in items if e.messages is not None]
    report.missing_system = sum(1 for m in chats if not any(x["role"] == "system" for x in m))
    report.missing_user = sum(1 for m in chats if not any(x["role"] == "user" for x in m))
    report.messages_per_example = stats([len(m) for m in chats])
    _tool_and_reasoning_counts(report, [e for _, e in items], d.train_reasoning)
    report.chat_template = apply_chat_template_choice(tokenizer, d.chat_template) if chats else "(raw text)"
    mismatch = method_mismatch(report.method, {e.kind for _, e in items + held_items}, report.format)
    if mismatch or report.method != "sft":
        _token_stats(report, [], recipe.model.max_seq_length)
        report.refusal = None
        if not mismatch and report.method == "grpo":
            from qlora_kit.data.check_prompts import prompt_stats

            prompt_stats(report, recipe, tokenizer, items)
        elif not mismatch:
            from qlora_kit.data.check_preference import preference_stats

            preference_stats(report, recipe, tokenizer, items)
        report.refusal = mismatch or report.refusal
        return report
    encoded = [encode_example(tokenizer, e, d.train_on, w, d.train_reasoning) for w, e in items]
    _token_stats(report, encoded, recipe.model.max_seq_length)
    if encoded:  # the first row with tool calls, else with thinking, else the first: the one worth looking at
        shown = next((enc for enc, (_, e) in zip(encoded, items) if any(m.get("tool_calls") for m in e.messages)),
                     next((enc for enc, (_, e) in zip(encoded, items) if _thinks(e)), encoded[0]))
        report.preview_row = shown.where
        report.preview = masking_preview(tokenizer, shown)
    return report


def _thinks(example) -> bool:
    return any("reasoning_content" in m for m in example.messages or [])


def _tool_and_reasoning_counts(report: CheckReport, examples: list, train_reasoning: bool) -> None:
    from qlora_kit.data.tool_messages import has_tools

    every = [e for e in examples if e.messages is not None]
    report.tool_rows = sum(1 for e in every if has_tools(e))
    report.tool_calls = sum(len(m.get("tool_calls") or []) for e in every
                            for m in e.messages + (e.chosen or []) + (e.rejected or []) + (e.completion or []))
    report.reasoning_rows = sum(1 for e in every if _thinks(e))
    report.train_reasoning = train_reasoning


def _token_stats(report: CheckReport, encoded: list[Encoded], max_len: int) -> None:
    report.tokens_per_example = stats([len(e.input_ids) for e in encoded])
    report.trained_tokens_per_example = stats([e.trained_tokens for e in encoded])
    report.over_max_length = sum(1 for e in encoded if len(e.input_ids) > max_len)
    kept = keep_trainable(encoded, max_len)
    report.nothing_to_train = kept.dropped
    report.total_tokens = kept.tokens
    report.total_trained_tokens = kept.trained_tokens
    report.refusal = untrainable(kept, len(encoded))


def render_text(r: CheckReport, color: bool = False) -> str:
    out = [f"Data check: {', '.join(r.sources)}",
           f"format: {r.format} ({'detected' if r.format_detected else 'from data.format'})",
           f"rows: {r.rows} read, {r.valid} valid, {r.rows - r.valid} with problems"]
    if r.held_out_from == "data.eval_path":
        out.append(f"held-out rows (data.eval_path): {r.eval_rows} read, {r.eval_valid} valid, "
                   f"{r.eval_rows - r.eval_valid} with problems")
    out.append("format errors:" if r.problems else "format errors: none found")
    for kind, e in r.problems.items():
        out.append(f"  {e['label']} ({kind}): {e['count']}")
        out.extend(f"      {line}" for line in e["first"])
    if r.problems and r.on_bad_rows == "skip":
        n = sum(e["count"] for e in r.problems.values())
        out.append(f"  data.on_bad_rows is skip: training drops these {n} row(s)")
    out.append(f"training rows: {r.train_rows}, held-out rows: {r.held_out_rows}"
               f"{f' ({r.held_out_from})' if r.held_out_from else ''}; the counts below are of the training rows")
    mpe, tpe, tte = r.messages_per_example, r.tokens_per_example, r.trained_tokens_per_example
    out += [
        f"examples missing a system message: {r.missing_system}",
        f"examples missing a user message: {r.missing_user}",
        f"messages per example: min {mpe.get('min', 0)}, mean {mpe.get('mean', 0)}, max {mpe.get('max', 0)}",
        f"chat template: {r.chat_template}",
        *_tool_and_reasoning_lines(r),
        f"tokens per example: min {tpe['min']}, mean {tpe['mean']}, p95 {tpe['p95']}, max {tpe['max']}",
        f"trained tokens per example: min {tte['min']}, mean {tte['mean']}, p95 {tte['p95']}, max {tte['max']}",
    ]
    if r.preference and r.method == "grpo":
        from qlora_kit.data.check_prompts import render_lines

        out += render_lines(r)
    elif r.preference:
        from qlora_kit.data.check_preference import render_lines

        out += render_lines(r)
    else:
        out += [f"rows over max_seq_length ({r.max_seq_length}): {r.over_max_length} (truncated when training)",
                f"rows with no trained token (dropped when training): {r.nothing_to_train}"]
    if r.max_steps:
        out.append(f"training tokens: {r.total_tokens:,} per pass over the data ({r.total_trained_tokens:,} trained); "
                   f"train.max_steps = {r.max_steps} decides how many passes")
    else:
        epochs = r.epochs
        out.append(f"training tokens: {r.total_tokens:,} per epoch x {epochs:g} epochs = "
                   f"{int(r.total_tokens * epochs):,} ({int(r.total_trained_tokens * epochs):,} trained)")
    legend = "trained tokens in green" if color else "trained tokens inside [[ ]]"
    for title, runs in ((" of the chosen answer" if r.preview_rejected else "", r.preview),
                        (" of the rejected answer", r.preview_rejected)):
        if runs:
            out.append(f"masking preview{title} ({r.preview_row}; {legend}):")
            out.extend("  " + line for line in _body(runs, color).splitlines())
    return "\n".join(out)


def _tool_and_reasoning_lines(r: CheckReport) -> list[str]:
    out = []
    if r.tool_rows:
        out.append(f"rows with tools: {r.tool_rows} ({r.tool_calls} tool calls, trained; tool results and the tools "
                   "list are context)")
    if r.reasoning_rows:
        share = 100 * r.reasoning_rows / max(r.train_rows, 1)
        trained = "trained" if r.train_reasoning else "context only (data.train_reasoning: false)"
        out.append(f"rows with reasoning: {r.reasoning_rows} of {r.train_rows} ({share:.0f}%; thinking {trained})")
        if share < 75:
            # Unsloth's advice for reasoning models: a mix mostly of thinking rows keeps the ability to think.
            out.append("  note: fewer than 3 in 4 rows think; a reasoning model fine-tuned mostly on rows without "
                       "thinking tends to lose it")
    return out


def _body(runs: list[tuple[str, bool]], color: bool) -> str:
    if color:
        return "".join(f"\033[32m{t}\033[0m" if trained else f"\033[2m{t}\033[0m" for t, trained in runs)
    return "".join(f"[[{t}]]" if trained else t for t, trained in runs)
