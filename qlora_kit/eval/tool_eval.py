"""Tool calls in eval (issue #27): when the held-out rows have tools, each system's generation is parsed in the
syntax of the run's chat template (runtime/tool_calls.py) and scored against the reference calls
(eval/tool_scoring.py): `tool_call_exact` per row (the right calls, names and arguments as JSON equal, or rightly
none) is the primary metric, and the report adds per-call precision and recall and name accuracy per system.
"""

from __future__ import annotations

from qlora_kit.errors import UsageError

TOOL_METRICS = ("tool_call_exact",)
_COUNTS = ("expected", "predicted", "name_correct", "exact")


def tool_family(name: str, tokenizer, rows) -> str | None:
    """The tool-call syntax to parse generations with (`name`: the training template, a built-in's name or
    "tokenizer"); None when no held-out row has tools."""
    from qlora_kit.runtime.tool_calls import TEMPLATE_FAMILIES, family_for_template

    if not any(r.tools for r in rows):
        return None
    family = TEMPLATE_FAMILIES.get(name) or family_for_template(tokenizer.chat_template or "")
    if family is None:
        raise UsageError(f"the held-out rows have tools, but the run's chat template ({name}) writes calls in a "
                         "syntax qlora-kit cannot parse (known: Hermes <tool_call>, Llama 3.1 JSON, Mistral "
                         "[TOOL_CALLS])")
    return family


def score_row(text: str, row, family: str) -> dict:
    """`tool_call_exact` (0/1) and the row's call counts, from the generated text."""
    from qlora_kit.eval.tool_scoring import score_tool_calls
    from qlora_kit.runtime.tool_calls import parse_tool_calls

    parsed = parse_tool_calls(text, family)
    s = score_tool_calls(parsed.tool_calls, list(row.calls), parsed.malformed)
    return {"tool_call_exact": float(s.row_exact), **{f"tool_calls_{k}": getattr(s, k) for k in _COUNTS}}


def tool_summary(per_row: list[dict], family: str | None) -> dict:
    """Per-call precision and recall of exact calls and name accuracy over the rows (a system's 'tool_calls')."""
    if family is None:
        return {}
    total = {k: sum(r["scores"][f"tool_calls_{k}"] for r in per_row) for k in _COUNTS}

    def ratio(num: str, den: str) -> float | None:
        return round(total[num] / total[den], 6) if total[den] else None

    return {"tool_calls": {**total, "precision": ratio("exact", "predicted"), "recall": ratio("exact", "expected"),
                           "name_accuracy": ratio("name_correct", "expected"), "syntax": family}}
