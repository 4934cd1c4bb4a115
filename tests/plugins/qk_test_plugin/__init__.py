"""A test-only plugin package, "installed" by putting tests/plugins on PYTHONPATH (its dist-info declares the
entry points): a hook that records every event it hears, a data format and a chat template."""

from __future__ import annotations

import json
import os

from qlora_kit.data.formats import Example, Format
from qlora_kit.data.templates import ChatTemplate


class RecordingHook:
    """Appends each event's JSON to $QK_TEST_HOOK_LOG (a plain object with on_event: no qlora-kit base class)."""

    def on_event(self, event) -> None:
        path = os.environ.get("QK_TEST_HOOK_LOG")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"type": type(event).__module__ + "." + type(event).__name__,
                                     **event.model_dump(mode="json")}) + "\n")


def _qa(row: dict) -> Example:
    return Example(messages=[{"role": "user", "content": row["q"]}, {"role": "assistant", "content": row["a"]}])


qa_format = Format("qa", ("q", "a"), _qa, "test plugin: {q, a} pairs")

bracket_template = ChatTemplate(
    name="brackets",
    jinja=("{%- for message in messages %}{{ '[' + message['role'] + '] ' + message['content'] + ' [end]\\n' }}"
           "{%- endfor %}{%- if add_generation_prompt %}{{ '[assistant] ' }}{%- endif %}"),
    end_of_turn=(" [end]",), special_tokens=(), description="test plugin template")


class FailingHook:
    """Raises on every step event (used with --hook): the run must go on, with a warning event."""

    def on_event(self, event) -> None:
        if event.event == "step":
            raise RuntimeError("failing on purpose")


def label_scorer(prediction: str, reference: str, row: dict) -> float:
    """A task score for the review labels: 1 when the predicted label is the reference's first word."""
    return float(prediction.strip().lower().startswith(reference.strip().lower()))


def raising_scorer(prediction: str, reference: str, row: dict) -> float:
    raise ValueError("no score for you")


def short_answer_reward(prompts, completions, **kwargs):
    """A GRPO reward function (entry point `qlora_kit.rewards`: short): 1.0 for completions of at most 12
    characters, else 0.0."""
    return [float(len(c) <= 12) for c in completions]
