"""GRPO (#29) without training: the grpo section's rules, GRPO rows as prompts plus the fields graders read,
`validate` and `data check` on them, the step event's GRPO metrics from TRL's log keys, the new event kind."""

from __future__ import annotations

import pytest

from conftest import run_cli_here, write_jsonl, write_recipe
from qlora_kit.data.example import RowProblem
from qlora_kit.data.prompts import prompt_example
from qlora_kit.errors import RecipeError
from qlora_kit.recipe import load_recipe

EXACT = {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"}
BASE = {"model": {"name": "builtin:tiny-llama"}, "data": {"path": "builtin:tiny-chat"}}


@pytest.mark.parametrize("sections, message", [
    ({"train": {"method": "grpo"}}, "train.method grpo needs at least one grader in grpo.graders"),
    ({"grpo": {"num_generations": 8}}, "grpo.num_generations applies to train.method grpo, but train.method is sft; "
     "set train.method: grpo, or remove the grpo section"),
    ({"train": {"method": "grpo", "batch_size": 6, "grad_accum": 1}, "grpo": {"graders": [EXACT]}},
     "grpo.num_generations 4 must divide the completions of one generation round, train.batch_size x "
     "(grpo.steps_per_generation or train.grad_accum) = 6; e.g. set train.batch_size: 4"),
    ({"train": {"method": "grpo"}, "grpo": {"graders": [EXACT], "reward_weights": [1, 2]}},
     "grpo.reward_weights has 2 weights for 1 graders; give one per grader"),
    ({"train": {"method": "grpo"}, "grpo": {"graders": [EXACT]}, "preference": {"beta": 0.2}},
     "preference.beta applies to the preference methods, but train.method is grpo"),
    ({"train": {"method": "grpo"}, "grpo": {"graders": [EXACT], "loss_type": "sigmoid"}}, "grpo.loss_type"),
    ({"train": {"method": "grpo"}, "grpo": {"graders": [{"operation": "eq"}]}},
     "grpo.graders[0] needs a 'type' (string_check, text_similarity, python, multi, tags, json_schema, function)"),
])
def test_grpo_options_are_checked(sections, message):
    with pytest.raises(RecipeError) as info:
        load_recipe({**BASE, **sections})
    assert message in str(info.value)


def test_auto_batch_is_one_group_and_a_dumped_recipe_loads_again():
    from qlora_kit.recipe import dump_recipe
    from qlora_kit.training.auto import resolve

    recipe = load_recipe({**BASE, "train": {"method": "grpo", "device": "cpu"},
                          "grpo": {"graders": [EXACT], "num_generations": 6}})
    resolved, _ = resolve(recipe)
    assert (resolved.train.batch_size, resolved.train.grad_accum) == (6, 1)
    again = load_recipe(__import__("yaml").safe_load(dump_recipe(resolved)))
    assert again.grpo.graders == [EXACT] and again.train.method == "grpo"


def test_validate_loads_the_graders(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", train={"method": "grpo", "batch_size": 4}, grpo={"graders": [
        {**EXACT, "operation": "equals"}]})
    result = run_cli_here(capsys, "validate", str(recipe))
    assert result.returncode == 2
    assert "grpo.graders[0] (string_check 'string_check'): unknown operation 'equals'; valid: eq, ne, like, ilike" \
        in result.stderr


def test_rows_become_prompts_with_their_fields():
    sft = prompt_example({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})
    assert sft.messages == [{"role": "user", "content": "Q"}] and sft.item["answer"] == "A" and sft.kind == "prompt"
    rft = prompt_example({"messages": [{"role": "user", "content": "Q"}], "answer": "B", "cases": [1, 2]})
    assert rft.item == {"messages": [{"role": "user", "content": "Q"}], "answer": "B", "cases": [1, 2]}
    own = prompt_example({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                          "answer": "mine"})
    assert own.item["answer"] == "mine"  # the row's own field wins over the trailing answer
    plain = prompt_example({"prompt": "Q", "completion": "C"})
    assert plain.messages == [{"role": "user", "content": "Q"}] and plain.item["answer"] == "C"
    for row, detail in (({"text": "x"}, "a GRPO row needs 'messages'"),
                        ({"messages": [{"role": "assistant", "content": "A"}]}, "must end with a user message"),
                        ({"prompt": "Q", "tools": [{"type": "function"}]}, "tools in GRPO rows are not supported")):
        with pytest.raises(RowProblem) as info:
            prompt_example(row)
        assert detail in info.value.detail


def test_data_check_counts_prompts_and_the_fields(tmp_path, capsys):
    rows = [{"messages": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)} for i in range(5)]
    rows.append({"messages": [{"role": "user", "content": "Say 9. " * 60}], "answer": "9"})  # too long to answer
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(path)}, train={"method": "grpo", "batch_size": 4},
                          grpo={"graders": [EXACT], "max_completion_length": 32})
    result = run_cli_here(capsys, "data", "check", str(recipe))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "training method: grpo; 5 prompts to sample completions for" in out
    assert "fields the graders can read as item.NAME (rows having each): answer (6), messages (6)" in out
    assert "prompts leaving less than grpo.max_completion_length of max_seq_length (128): 1 (dropped" in out
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}] * 2)
    bad = write_recipe(tmp_path / "b.yaml", data={"path": str(prefs)}, train={"method": "grpo", "batch_size": 4},
                       grpo={"graders": [EXACT]})
    result = run_cli_here(capsys, "data", "check", str(bad))
    assert result.returncode == 0  # a prompt/chosen/rejected row is read as its prompt: the answers are ignored
    sft = write_recipe(tmp_path / "s.yaml", data={"path": str(path)})
    result = run_cli_here(capsys, "data", "check", str(sft))
    assert result.returncode == 2 and "the conversation has no assistant message to train on" in result.stderr


def test_step_events_carry_trl_grpo_logs_under_our_names():
    from qlora_kit.events import make_event
    from qlora_kit.training.callbacks import grpo_metrics

    logs = {"loss": 0.1, "reward": 0.75, "reward_std": 0.2, "rewards/exact/mean": 0.5, "rewards/exact/std": 0.5,
            "rewards/close/mean": 0.25, "rewards/close/std": 0.1, "completions/mean_length": 7.5,
            "completions/clipped_ratio": 0.25, "kl": 0.01, "frac_reward_zero_std": 0.0}
    found = grpo_metrics(logs)
    assert found["graders"] == {"exact": {"mean": 0.5, "std": 0.5}, "close": {"mean": 0.25, "std": 0.1}}
    assert (found["reward"], found["completion_length_mean"], found["kl"]) == (0.75, 7.5, 0.01)
    assert grpo_metrics({"loss": 0.1, "kl": 0.3, "rewards/chosen": 1.0}) is None  # KTO's log: not GRPO
    step = make_event("step", run_id="r", seq=1, t=0.0, step=1, max_steps=2, loss=0.1, grpo=found)
    assert step.grpo.graders["exact"].mean == 0.5
    shown = make_event("completions", run_id="r", seq=2, t=0.0, step=1, samples=[
        {"prompt": "Q", "completion": "A", "rewards": {"exact": 1.0}}])
    assert shown.samples[0].rewards == {"exact": 1.0}
