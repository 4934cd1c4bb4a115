"""Eval building blocks without models: scores, the bootstrap interval, the verdict's wording, few-shot prompts and
the leakage split."""

from __future__ import annotations

import pytest

from qlora_kit.eval.report import judge
from qlora_kit.eval.rows import EvalRow, few_shot, split_leaked, with_shots
from qlora_kit.eval.run import EvalOptions
from qlora_kit.eval.scoring import bootstrap_interval, normalize, score, token_f1


def test_scores_on_known_pairs():
    assert score("Paris.", "Paris.") == {"exact_match": 1.0, "normalized_exact_match": 1.0, "token_f1": 1.0,
                                         "chrf": 1.0}
    s = score("the Paris", "Paris.")
    assert s["exact_match"] == 0.0 and s["normalized_exact_match"] == 1.0 and s["token_f1"] == 1.0
    assert token_f1("red fox jumps", "red dog jumps") == pytest.approx(2 / 3)
    assert normalize("  The   Quick, brown fox! ") == "quick brown fox"
    assert 0.0 < score("Pariss", "Paris")["chrf"] < 1.0 and score("xyz", "Paris")["chrf"] == 0.0


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_rows():
    low, high = bootstrap_interval([1.0] * 8 + [0.0] * 2)
    assert low < 0.8 < high and high <= 1.0
    wide = bootstrap_interval([1.0, 0.0] * 5)
    narrow = bootstrap_interval([1.0, 0.0] * 200)
    assert (narrow[1] - narrow[0]) < (wide[1] - wide[0]) / 3
    assert bootstrap_interval([0.0] * 30) == (0.0, 0.0)


def _results(**per_system):
    """system -> list of exact-match values per row."""
    return {name: {"rows": [{"scores": {"exact_match": v}} for v in values], "exact_match": sum(values) / len(values),
                   "prompt_tokens_per_request": 80.0 if name == "fewshot" else 20.0}
            for name, values in per_system.items()}


def test_verdict_says_better_worse_or_unclear_from_the_interval():
    opts = EvalOptions()
    better, _ = judge(_results(base=[0.0] * 30, fewshot=[0.0] * 25 + [1.0] * 5, adapter=[1.0] * 27 + [0.0] * 3,
                               **{"gguf:q8_0": [1.0] * 26 + [0.0] * 4}), "exact_match", opts)
    assert better["outcome"] == "better" and better["baseline"] == "fewshot" and better["tuned"] == "adapter"
    assert better["text"].startswith("Fine-tuning beat few-shot prompting by 73 points of exact match (95% interval")
    assert "saves 60 prompt tokens per request against few-shot prompting" in better["text"]
    assert "Q8_0 keeps 95% of the gain" in better["text"]
    worse, _ = judge(_results(base=[1.0] * 30, adapter=[0.0] * 30), "exact_match", opts)
    assert worse["outcome"] == "worse" and worse["text"].startswith("Fine-tuning did NOT help: the base model")
    unclear, _ = judge(_results(base=[0.0, 1.0] * 3, adapter=[1.0, 0.0] * 3), "exact_match", opts)
    assert unclear["outcome"] == "unclear" and "includes zero" in unclear["text"]


def test_token_savings_are_claimed_only_where_the_tuned_system_is_as_good_as_few_shot():
    opts = EvalOptions()
    # Learned nothing: every system answers as badly; few-shot's 60 extra tokens buy nothing, but nothing is saved.
    nothing, _ = judge(_results(base=[0.0] * 30, fewshot=[0.0] * 30, adapter=[0.0] * 30), "exact_match", opts)
    assert nothing["outcome"] == "unclear" and "saves" not in nothing["text"]
    assert nothing["text"].endswith("includes zero; few-shot prompting is as good or better, at 60 more prompt "
                                    "tokens per request.")
    # Few-shot answers 10 of 30, the adapter 8 of them: not clearly worse, not as good either.
    behind, _ = judge(_results(base=[0.0] * 30, fewshot=[1.0] * 10 + [0.0] * 20, adapter=[1.0] * 8 + [0.0] * 22),
                      "exact_match", opts)
    assert behind["outcome"] == "unclear" and behind["difference"] == pytest.approx(-2 / 30, abs=1e-6)
    assert behind["text"].endswith("; few-shot prompting is as good or better, at 60 more prompt tokens per request.")
    # As good as few-shot on every row and far better than zero-shot: the 60 tokens are a real saving.
    matched, _ = judge(_results(base=[0.0] * 30, fewshot=[1.0] * 30, adapter=[1.0] * 30), "exact_match", opts)
    assert matched["outcome"] == "unclear"
    assert matched["text"].endswith("; it saves 60 prompt tokens per request against few-shot prompting.")


def test_gguf_that_loses_the_gain_is_warned_about():
    _, warnings = judge(_results(base=[0.0] * 20, adapter=[1.0] * 20, merged=[1.0] * 20,
                                 **{"gguf:q2_k": [1.0] * 10 + [0.0] * 10}), "exact_match", EvalOptions())
    assert warnings == ["gguf:q2_k scores 50 points of exact_match below the merged model (more than 5): try a "
                        "larger quantization type"]


def _row(i: int, system: bool = False) -> EvalRow:
    prompt = ({"role": "system", "content": "Be brief."},) if system else ()
    return EvalRow(f"data.jsonl:{i}", prompt + ({"role": "user", "content": f"q{i}"},), f"a{i}")


def test_few_shot_examples_are_fixed_never_held_out_and_go_before_the_question():
    train = [_row(i) for i in range(10)]
    held = [_row(3), _row(20, system=True)]
    shots = few_shot(train, 3, seed=0, held=held)
    assert shots == few_shot(train, 3, seed=0, held=held) and len(shots) == 3
    assert _row(3) not in shots
    messages = with_shots(held[1], shots)
    assert messages[0] == {"role": "system", "content": "Be brief."} and messages[-1]["content"] == "q20"
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 3 + ["user"]
    clean, leaked = split_leaked(held, train)
    assert clean == [held[1]] and leaked == [held[0]]
