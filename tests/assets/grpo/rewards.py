"""Reward functions the GRPO tests name: a TRL-style custom function (module:function) and python grader files."""

from __future__ import annotations


def digit_share(prompts, completions, **kwargs):
    """TRL's reward-function signature: the share of digits in each completion."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def grade(sample, item):
    """A python grader (OpenAI's signature): 1 when the completion contains the row's digit."""
    return float(item["digit"] in sample["output_text"])


def boom(sample, item):
    return 1 / 0


def slow(sample, item):
    import time

    time.sleep(60)
    return 1.0


def wordy(sample, item):
    return "yes"
