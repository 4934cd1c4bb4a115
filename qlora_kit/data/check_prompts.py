"""`data check` for GRPO rows (train.method grpo): the prompts the policy will answer and the fields its graders read.

Counted as `train` encodes them (data/prompts.py): prompt token lengths through the chat template with the
generation prompt, rows whose prompt leaves less than grpo.max_completion_length of model.max_seq_length (dropped
when training), and the row fields (item.*) the graders can read. Nothing is trained in advance (completions are
sampled while training), so the preview shows the first prompt as the model sees it, every token context.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from qlora_kit.data.encode import IGNORE_INDEX, Encoded
from qlora_kit.data.preview import masking_preview, stats

if TYPE_CHECKING:  # check.py calls this module; a run-time import back would be a circle
    from qlora_kit.data.check import CheckReport


def prompt_stats(report: CheckReport, recipe, tokenizer, items: list) -> None:
    from qlora_kit.data.encode import render
    from qlora_kit.data.prompts import encode_prompts

    max_len, room = recipe.model.max_seq_length, recipe.grpo.max_completion_length
    split = encode_prompts(tokenizer, items, max_len, room)
    full = encode_prompts(tokenizer, items, 10**9, 0)
    fields = Counter(key for _, e in items for key in (e.item or {}))
    report.preference = {"prompts": len(split.rows), "prompt_tokens": stats([r.prompt_tokens for r in full.rows]),
                         "prompt_too_long": split.dropped, "fields": dict(sorted(fields.items()))}
    report.nothing_to_train = split.dropped
    report.total_tokens, report.total_trained_tokens = split.tokens, 0
    report.tokens_per_example = stats([r.prompt_tokens for r in split.rows])
    if not split.rows:
        report.refusal = (f"data.path: every one of the {len(items)} prompts leaves less than "
                          f"grpo.max_completion_length ({room}) tokens of model.max_seq_length ({max_len}); raise "
                          "model.max_seq_length or lower grpo.max_completion_length")
        return
    first = split.rows[0]
    ids = tokenizer(render(tokenizer, first.messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    report.preview_row = first.where
    report.preview = masking_preview(tokenizer, Encoded(ids, [IGNORE_INDEX] * len(ids)))


def render_lines(r: CheckReport) -> list[str]:
    pr = r.preference
    pt = pr["prompt_tokens"]
    fields = ", ".join(f"{name} ({count})" for name, count in pr["fields"].items()) or "none"
    return [f"training method: grpo; {pr['prompts']} prompts to sample completions for",
            f"prompt tokens: min {pt['min']}, mean {pt['mean']}, p95 {pt['p95']}, max {pt['max']}",
            f"fields the graders can read as item.NAME (rows having each): {fields}",
            f"prompts leaving less than grpo.max_completion_length of max_seq_length ({r.max_seq_length}): "
            f"{pr['prompt_too_long']} (dropped when training)"]
