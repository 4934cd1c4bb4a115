"""The catch-all formats, registered last: prompt/completion pairs and raw text."""

from __future__ import annotations

from qlora_kit.data.example import Example, RowProblem, _text, register
from qlora_kit.data.formats_chat import _openai


@register("prompt_completion", ("prompt", "completion"), "{'prompt', 'completion'} (strings or message lists)")
def _prompt_completion(row: dict) -> Example:
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt-completion
        return _openai({"messages": prompt + completion, "tools": row.get("tools")})
    prompt, completion = _text(prompt or "", "prompt"), _text(completion or "", "completion")
    if not prompt.strip():
        raise RowProblem("missing_content", "'prompt' is empty")
    if not completion.strip():
        raise RowProblem("no_assistant_turn", "'completion' is empty: nothing to train on")
    return Example(messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])


@register("text", ("text",), "raw text: {'text'} (every token is trained)")
def _raw_text(row: dict) -> Example:
    text = _text(row["text"] if row["text"] is not None else "", "text")
    if not text.strip():
        raise RowProblem("missing_content", "'text' is empty")
    return Example(text=text)
