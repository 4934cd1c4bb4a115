"""Eval building blocks without models: scores, the bootstrap interval, the verdict's wording, few-shot prompts and
the leakage split."""

from __future__ import annotations

import pytest

from qlora_kit.eval.report import judge
from qlora_kit.eval.rows import EvalRow, few_shot, split_leaked, with_shots
from qlora_kit.recipe.options import EvalOptions
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


# --- recorded answers (the migration check): parsing, matching, scoring, the verdict ---------------------------------

def _recorded_file(tmp_path, lines) -> str:
    import json

    path = tmp_path / "old.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return str(path)


def test_recorded_lines_in_the_three_shapes_a_user_saves():
    from qlora_kit.eval.recorded import parse_line

    user = [{"role": "user", "content": "q1"}]
    plain = parse_line({"messages": user, "answer": "a1"}, "old.jsonl:1")
    assert plain.messages == ({"role": "user", "content": "q1"},) and plain.answer == "a1"
    api = parse_line({"messages": user, "response": {"id": "x", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "a1"}}]}}, "old.jsonl:2")
    assert api == plain.__class__("old.jsonl:2", plain.messages, "a1")
    tail = parse_line({"messages": [{"role": "system", "content": "Be brief."}, *user,
                                    {"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                                      {"type": "text", "text": "1"}]}]}, "old.jsonl:3")
    assert tail.answer == "a1" and [m["role"] for m in tail.messages] == ["system", "user"]
    extra = parse_line({"messages": [{"role": "user", "content": "q1", "name": "me"}], "answer": ""}, "old.jsonl:4")
    assert extra.messages == plain.messages and extra.answer == "", "extra keys dropped; an empty answer is an answer"


@pytest.mark.parametrize("line, message", [
    ({"messages": [{"role": "user", "content": "q"}]}, "old.jsonl:1: no answer; give 'answer', a chat-completions "
                                                       "'response'"),
    ({"messages": [{"role": "user", "content": "q"}], "answer": None}, "old.jsonl:1: the answer must be a string, "
                                                                       "not NoneType"),
    ({"messages": [{"role": "user", "content": "q"}], "response": {"choices": []}},
     "old.jsonl:1: 'response' has no choices[0].message.content"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "b"},
     "old.jsonl:1: 'answer' and a last assistant message: more than one answer; keep one"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "old.jsonl:1: no prompt: 'messages' holds only the answer"),
    ({"messages": [{"role": "robot", "content": "q"}], "answer": "a"}, "old.jsonl:1: messages[0] must be an object "
                                                                       "with a role"),
    ({"answer": "a"}, "old.jsonl:1: 'messages' must be a non-empty list"),
    (["q", "a"], "old.jsonl:1: a recorded answer must be a JSON object, not a list"),
])
def test_a_recorded_line_without_a_usable_answer_is_one_line_naming_it(line, message):
    from qlora_kit.errors import DataError
    from qlora_kit.eval.recorded import parse_line

    with pytest.raises(DataError) as exc:
        parse_line(line, "old.jsonl:1")
    assert str(exc.value).startswith(message)


def test_a_recorded_file_that_is_missing_or_broken_is_one_line_naming_file_and_line(tmp_path):
    from qlora_kit.errors import UsageError
    from qlora_kit.eval.recorded import load_recorded

    with pytest.raises(UsageError, match=r"^--systems recorded:nowhere.jsonl: no such file$"):
        load_recorded("nowhere.jsonl")
    ok = {"messages": [{"role": "user", "content": "q"}], "answer": "a"}
    path = _recorded_file(tmp_path, [ok, "", '{"messages": [', ok])
    with pytest.raises(UsageError) as exc:
        load_recorded(path)
    assert str(exc.value) == f"{path}:3: bad JSON (Expecting value at column 15)"
    with pytest.raises(UsageError, match="the file holds no recorded answers"):
        load_recorded(_recorded_file(tmp_path, []))
    assert len(load_recorded(_recorded_file(tmp_path, [ok, "", ok])).rows) == 2, "blank lines are not rows"


def test_recorded_lines_match_held_out_rows_by_their_prompt(tmp_path):
    from qlora_kit.eval.recorded import load_recorded, match

    held, train = [_row(i) for i in range(3)], [_row(i) for i in range(10, 14)]
    lines = [{"messages": [{"role": "user", "content": f"q{i}"}], "answer": f"old{i}"} for i in (2, 0, 1, 11)]
    lines.append({"messages": [{"role": "user", "content": "q99 "}], "answer": "x"})  # matches no row at all
    lines.append(lines[0])  # a repeated line with the same answer is harmless
    matched = match(load_recorded(_recorded_file(tmp_path, lines)), held[:2], held + train, None)
    assert matched.answers == ["old0", "old1"], "in the held-out rows' order"
    assert matched.summary == {"file": str(tmp_path / "old.jsonl"), "lines": 6, "rows_scored": 2,
                               "prompts_not_scored": 3, "prompts_matching_no_row": 1}
    assert matched.warning == (f"1 line(s) of {tmp_path / 'old.jsonl'} match no row of the data and were not scored "
                               f"(first: {tmp_path / 'old.jsonl'}:5): is their prompt the same (system message, "
                               "whitespace)?")
    # The recipe's system prompt is added to recorded conversations without one, as to the held-out rows.
    with_system = [_row(20, system=True)]
    matched = match(load_recorded(_recorded_file(tmp_path, [{"messages": [{"role": "user", "content": "q20"}],
                                                             "answer": "a"}])), with_system, with_system, "Be brief.")
    assert matched.answers == ["a"] and matched.warning is None


def test_a_held_out_row_without_a_recorded_answer_or_two_answers_to_one_prompt_are_refused(tmp_path):
    from qlora_kit.errors import DataError
    from qlora_kit.eval.recorded import load_recorded, match

    held = [_row(i) for i in range(3)]
    path = _recorded_file(tmp_path, [{"messages": [{"role": "user", "content": "q1"}], "answer": "a"}])
    with pytest.raises(DataError) as exc:
        match(load_recorded(path), held, held, None)
    assert str(exc.value).startswith(f"--systems recorded:{path}: no recorded answer for held-out row data.jsonl:0 "
                                     "(2 of 3 have none); a line answers a row when its messages equal the row's")
    path = _recorded_file(tmp_path, [{"messages": [{"role": "user", "content": f"q{i}"}], "answer": a}
                                     for i, a in ((0, "a"), (1, "b"), (2, "c"), (1, "B"))])
    with pytest.raises(DataError, match=rf"^{path}:4: the same prompt as {path}:2 with a different answer; keep one"):
        match(load_recorded(path), held, held, None)


def test_system_names_accept_recorded_files_and_validate_reads_them(tmp_path):
    from qlora_kit.errors import UsageError
    from qlora_kit.eval.names import parse_systems
    from qlora_kit.recipe.checks import reference_problems

    assert parse_systems("adapter, recorded:old.jsonl,recorded:old.jsonl") == ["adapter", "recorded:old.jsonl"]
    for bad in ("recorded", "recorded:", "base:x"):
        with pytest.raises(UsageError, match=rf"^--systems: unknown system '{bad}'; .* recorded:FILE"):
            parse_systems(bad)
    broken = _recorded_file(tmp_path, [{"messages": [{"role": "user", "content": "q"}]}])
    problems = reference_problems({"eval": {"systems": ["adapter", f"recorded:{broken}", "recorded:nowhere.jsonl"]}})
    assert problems == [f"eval.systems recorded:{broken}: {broken}:1: no answer; give 'answer', a chat-completions "
                        "'response' ({\"choices\": [{\"message\": {\"content\": ...}}]}), or 'messages' ending with "
                        "the assistant's answer",
                        "eval.systems recorded:nowhere.jsonl: no such file"]
    assert reference_problems({"eval": {"systems": ["tuned"]}})[0].startswith("eval.systems: unknown system 'tuned'")


def test_recorded_answers_are_scored_like_generated_ones_and_have_no_loss_or_prompt_tokens():
    from qlora_kit.eval.graded import Extra
    from qlora_kit.eval.report import _markdown
    from qlora_kit.eval.run import _score_recorded

    rows = [_row(0), _row(1)]
    result = _score_recorded([" a0\n", "the A1"], rows, scorer=Extra(lambda p, r, row: float(p.endswith(r[-1]))))
    assert [r["prediction"] for r in result["rows"]] == ["a0", "the A1"]
    assert result["exact_match"] == 0.5 and result["normalized_exact_match"] == 1.0 and result["custom"] == 1.0
    assert result["loss"] is result["perplexity"] is result["prompt_tokens_per_request"] is None
    assert result["rows"][0]["prompt_tokens"] is None and "loss" in result["not_available"]
    report = {"run": "runs/x", "rows": 2, "rows_from": "the run's eval split", "max_new_tokens": 8, "scorer": None,
              "metric": "exact_match", "verdict": {"text": "v"}, "warnings": [],
              "results": {"recorded:old.jsonl": {k: v for k, v in result.items() if k != "rows"}},
              "recorded": {"recorded:old.jsonl": {"rows_scored": 2, "prompts_not_scored": 0}}}
    md = _markdown(report)
    assert "| recorded:old.jsonl | 0.500 | 1.000 | 1.000 |" in md and md.count("| n/a") == 4
    assert "no prompt-token figure" in md


def test_verdict_against_a_recorded_model_beat_matches_did_not_match_or_unclear():
    opts = EvalOptions()

    def verdict(adapter, old, **others):
        return judge(_results(adapter=adapter, **{"recorded:old.jsonl": old}, **others), "exact_match", opts)[0]

    beat = verdict([1.0] * 27 + [0.0] * 3, [0.0] * 30, base=[0.0] * 30)
    assert beat["outcome"] == "better" and beat["recorded"][0]["outcome"] == "better"
    assert beat["text"].startswith("Fine-tuning beat the base model (zero-shot) by 90 points")
    assert beat["text"].endswith(". The tuned model (adapter) beat the recorded model (old.jsonl) by 90 points of "
                                 "exact match (95% interval +77 to +100 points over 30 rows).")
    same = verdict([1.0] * 20 + [0.0] * 10, [1.0] * 20 + [0.0] * 10)
    assert same["outcome"] == "none" and same["recorded"][0]["outcome"] == "matches"
    assert same["text"] == ("The tuned model (adapter) matches the recorded model (old.jsonl) within the interval: "
                            "they differ by +0 points of exact match, and the interval rules out a loss of more than 5 "
                            "points (95% interval +0 to +0 points over 30 rows).")
    lost = verdict([0.0] * 30, [1.0] * 30)
    assert lost["recorded"][0] == {"system": "recorded:old.jsonl", "outcome": "worse", "tuned": "adapter",
                                   "difference": -1.0, "interval95": [-1.0, -1.0], "rows": 30,
                                   "text": "The tuned model (adapter) did NOT match the recorded model (old.jsonl): it "
                                           "scores 100 points of exact match lower (95% interval -100 to -100 points "
                                           "over 30 rows)."}
    unsure = verdict([1.0, 0.0] * 5, [0.0, 1.0] * 5)
    assert unsure["recorded"][0]["outcome"] == "unclear"
    assert unsure["text"].startswith("Could not tell whether the tuned model (adapter) matches the recorded model "
                                     "(old.jsonl): they differ by +0 points of exact match, and the interval includes "
                                     "zero and losses of more than 5 points (95% interval -")
    none, _ = judge(_results(base=[0.0] * 3, **{"recorded:old.jsonl": [1.0] * 3}), "exact_match", opts)
    assert none == {"text": "no verdict: compare a tuned system (adapter, merged or gguf:TYPE) with base, fewshot or "
                            "recorded:FILE", "outcome": "none"}


def test_eval_of_a_run_starts_from_its_recipe_eval_section_and_flags_override_it(tmp_path):
    """`qlora-kit eval RUN` used to ignore the run's eval: section (its max_new_tokens: 16 became 64)."""
    from conftest import write_recipe
    from qlora_kit.cli import build_parser
    from qlora_kit.cli.options import stage_options
    from qlora_kit.eval.run import run_eval_section

    run = tmp_path / "run"
    run.mkdir()
    write_recipe(run / "recipe.yaml", eval={"max_new_tokens": 16, "samples": 20, "systems": ["base", "adapter"]})
    args = build_parser().parse_args(["eval", str(run), "--samples", "5", "--set", "eval.fewshot=2"])
    options = stage_options(args, EvalOptions, "eval", base=run_eval_section(run))
    assert (options.max_new_tokens, options.samples, options.systems, options.fewshot) == (16, 5, ["base", "adapter"], 2)
    assert run_eval_section(tmp_path / "no-run") is None  # eval's own check then names what is missing
