"""`data check` for preference rows (train.method dpo, orpo, kto, simpo): what the trainer will score.

Counted on the training rows exactly as `train` encodes them (data/preference.py): prompt and answer token
lengths, rows whose prompt leaves no room for an answer in model.max_seq_length (dropped), rows cut to fit, the
KTO label balance (KTO weighs desirable and undesirable rows; TRL's advice is a ratio within 1:1 to 4:3 once the
weights are applied), and a preview of one row with both answers, trained tokens marked. Pairs with an empty side
or the same answer twice are row problems (data/formats.py), listed with the other format errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qlora_kit.data.encode import IGNORE_INDEX, Encoded
from qlora_kit.data.preference import encode_preferences
from qlora_kit.data.preview import masking_preview, stats

if TYPE_CHECKING:  # check.py calls this module; a run-time import back would be a circle
    from qlora_kit.data.check import CheckReport


def preference_stats(report: CheckReport, recipe, tokenizer, items: list) -> None:
    """Fill the report's preference numbers, token totals, refusal and previews from the training items."""
    p, max_len, method = recipe.preference, recipe.model.max_seq_length, recipe.train.method
    split = encode_preferences(tokenizer, items, max_len, p.max_prompt_length, p.max_completion_length,
                               unpair=method == "kto")
    full = encode_preferences(tokenizer, items, 10**9, unpair=method == "kto")  # lengths before any cut
    rows = split.rows
    labels = [r.label for r in rows if r.label is not None]
    report.preference = {
        "rows": len(rows), "pairs": sum(r.rejected_ids is not None for r in rows),
        "prompt_tokens": stats([len(r.prompt_ids) for r in full.rows]),
        "chosen_tokens": stats([len(r.chosen_ids) for r in full.rows]),
        "rejected_tokens": stats([len(r.rejected_ids) for r in full.rows if r.rejected_ids is not None]),
        "prompt_too_long": split.dropped, "cut_to_fit": split.truncated,
        "desirable": sum(labels), "undesirable": len(labels) - sum(labels),
    }
    report.over_max_length = sum(1 for r in full.rows if r.length > max_len)
    report.nothing_to_train = split.dropped
    report.total_tokens, report.total_trained_tokens = split.tokens, split.trained_tokens
    report.tokens_per_example = stats([r.tokens for r in rows])
    report.trained_tokens_per_example = stats([r.trained_tokens for r in rows])
    if not rows:
        report.refusal = (f"data.path: every one of the {len(items)} rows has a prompt too long for "
                          f"model.max_seq_length ({max_len}); raise it or set preference.max_prompt_length")
        return
    if method == "kto" and not (report.preference["desirable"] and report.preference["undesirable"]):
        report.refusal = ("data.path: KTO needs both desirable (label true) and undesirable (label false) rows; "
                          f"found {report.preference['desirable']} and {report.preference['undesirable']}")
    first = rows[0]
    report.preview_row = first.where
    report.preview = _preview(tokenizer, first.prompt_ids, first.chosen_ids)
    if first.rejected_ids is not None:
        report.preview_rejected = _preview(tokenizer, first.prompt_ids, first.rejected_ids)


def _preview(tokenizer, prompt: list[int], answer: list[int]) -> list[tuple[str, bool]]:
    return masking_preview(tokenizer, Encoded(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))


def render_lines(r: CheckReport) -> list[str]:
    pr = r.preference
    pt, ct, rt = pr["prompt_tokens"], pr["chosen_tokens"], pr["rejected_tokens"]
    out = [f"training method: {r.method}; {pr['rows']} rows to score ({pr['pairs']} pairs)",
           f"prompt tokens: min {pt['min']}, mean {pt['mean']}, p95 {pt['p95']}, max {pt['max']}",
           f"{'chosen' if pr['pairs'] else 'completion'} tokens: min {ct['min']}, mean {ct['mean']}, p95 {ct['p95']}, "
           f"max {ct['max']}"]
    if pr["pairs"]:
        out.append(f"rejected tokens: min {rt['min']}, mean {rt['mean']}, p95 {rt['p95']}, max {rt['max']}")
    if r.method == "kto":
        out.append(f"KTO labels: {pr['desirable']} desirable, {pr['undesirable']} undesirable")
    out += [f"rows whose prompt fills max_seq_length ({r.max_seq_length}): {pr['prompt_too_long']} (dropped when "
            "training)", f"rows cut to fit max_seq_length or the preference length limits: {pr['cut_to_fit']}"]
    return out
