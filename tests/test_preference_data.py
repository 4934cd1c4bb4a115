"""Preference data and recipes (#26), no training: formats, bad rows named by line, data.columns, the method
checks, the token ids the trainers score, and the CPU log-prob kernel against a plain log_softmax."""

from __future__ import annotations

import pytest

from conftest import run_cli_here, write_jsonl, write_recipe
from qlora_kit.data.formats import Example
from qlora_kit.data.prepare import load_examples
from qlora_kit.errors import DataError, RecipeError
from qlora_kit.recipe import load_recipe

PAIR = {"prompt": "What is 2 plus 2?", "chosen": "4.", "rejected": "Five, I think."}
CONV = {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4."}], "rejected": [{"role": "assistant", "content": "5."}]}
OPENAI = {"input": {"messages": [{"role": "user", "content": "2+2?"}], "tools": [], "parallel_tool_calls": True},
          "preferred_output": [{"role": "assistant", "content": "4."}],
          "non_preferred_output": [{"role": "assistant", "content": "5."}]}
KTO = {"prompt": "2+2?", "completion": "4.", "label": True}


def _data(tmp_path, rows, **data):
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    return load_recipe({"model": {"name": "builtin:tiny-llama"}, "data": {"path": str(path), **data}}).data


@pytest.mark.parametrize("row, fmt, kind", [(PAIR, "preference", "pair"), (CONV, "preference", "pair"),
                                            (OPENAI, "openai_dpo", "pair"), (KTO, "kto", "unpaired")])
def test_each_format_is_detected_and_read(tmp_path, row, fmt, kind):
    items, _, found = load_examples(_data(tmp_path, [row] * 3), seed=0)
    assert found == fmt and {e.kind for _, e in items} == {kind}
    example = items[0][1]
    assert example.messages[-1]["role"] in ("user", "system") and example.messages[-1]["content"]
    if kind == "pair":
        assert example.chosen[0]["role"] == example.rejected[0]["role"] == "assistant"
        assert example.chosen != example.rejected
    else:
        assert example.completion == [{"role": "assistant", "content": "4."}] and example.label is True


@pytest.mark.parametrize("row, message", [
    ({**PAIR, "rejected": "4."}, "'chosen' and 'rejected' are the same answer: the pair teaches nothing"),
    ({**PAIR, "chosen": "  "}, "'chosen' is empty: a preference needs both answers"),
    ({**PAIR, "rejected": []}, "'rejected' must be a string or a non-empty list of assistant messages"),
    ({**CONV, "prompt": CONV["prompt"] + [{"role": "assistant", "content": "x"}]},
     "'prompt' ends with an assistant message; the answers go in the chosen/rejected (or completion) columns"),
    ({**CONV, "chosen": [{"role": "user", "content": "4."}]}, "'chosen' must hold assistant messages only"),
    ({**OPENAI, "input": {**OPENAI["input"], "tools": [{"type": "function"}]}},
     "'input.tools'[0] must be a function with a name ({'type': 'function', 'function': {'name', 'description', "
     "'parameters'}})"),
    ({**OPENAI, "input": {"messages": OPENAI["input"]["messages"], "metadata": 1}}, "'input' has unknown key(s) metadata"),
    ({**KTO, "label": "yes"}, "'label' must be true or false, not 'yes'"),
    ({**KTO, "prompt": ""}, "'prompt' is empty"),
])
def test_a_bad_row_is_one_line_naming_its_line(tmp_path, row, message):
    good = PAIR if "chosen" in row or "input" not in row and "label" not in row else OPENAI if "input" in row else KTO
    with pytest.raises(DataError) as info:
        load_examples(_data(tmp_path, [good, good, row]), seed=0)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{tmp_path / 'prefs.jsonl'}:3: ") and message in text, text


def test_data_columns_map_other_names(tmp_path):
    rows = [{"question": "2+2?", "good": "4.", "bad": "5."}] * 2
    items, _, fmt = load_examples(_data(tmp_path, rows, columns={"prompt": "question", "chosen": "good",
                                                                  "rejected": "bad"}), seed=0)
    assert fmt == "preference" and items[0][1].chosen == [{"role": "assistant", "content": "4."}]
    with pytest.raises(RecipeError, match="data.columns: .*'chosn' is not a column of any data format"):
        _data(tmp_path, rows, columns={"chosn": "good"})


@pytest.mark.parametrize("method, rows, message", [
    ("sft", [PAIR], "the rows are preference pairs (format preference), but train.method is sft; set train.method: dpo"),
    ("sft", [KTO], "the rows are unpaired feedback (format kto), but train.method is sft; set train.method: kto"),
    ("dpo", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
     "train.method dpo trains on preference data, but the rows are format openai"),
    ("orpo", [KTO], "train.method orpo needs pairs (prompt, chosen, rejected), but the rows are unpaired"),
])
def test_rows_of_the_wrong_kind_for_the_method(tmp_path, method, rows, message):
    with pytest.raises(DataError) as info:
        load_examples(_data(tmp_path, rows * 2), seed=0, method=method)
    assert str(info.value).startswith("data.path: ") and message in str(info.value)


def test_kto_takes_pairs_and_unpaired_rows(tmp_path):
    for rows in ([PAIR] * 2, [KTO] * 2):
        items, _, _ = load_examples(_data(tmp_path, rows), seed=0, method="kto")
        assert len(items) == 2


@pytest.mark.parametrize("train, preference, message", [
    ({"method": "sft"}, {"beta": 0.2}, "preference.beta applies to the preference methods, but train.method is sft"),
    ({"method": "kto"}, {"simpo_gamma": 1.0}, "preference.simpo_gamma applies to train.method simpo, not kto"),
    ({"method": "orpo"}, {"desirable_weight": 2.0}, "preference.desirable_weight applies to train.method kto, not orpo"),
    ({"method": "dpo"}, {"loss_type": "kto"}, "preference.loss_type: 'kto' is not a dpo loss; dpo accepts: sigmoid, "
     "ipo, hinge"),
    ({"method": "dpo"}, {"beta": 0}, "preference.beta"),
    ({"method": "rlhf"}, {}, "train.method"),
])
def test_method_options_are_checked_strictly(tmp_path, train, preference, message):
    with pytest.raises(RecipeError, match=None) as info:
        load_recipe({"model": {"name": "builtin:tiny-llama"}, "data": {"path": "builtin:tiny-chat"}, "train": train,
                     "preference": preference})
    assert message in str(info.value)


def test_a_dumped_preference_recipe_loads_again():
    """Run directories record the resolved recipe with every field written out: it must load as it was."""
    from qlora_kit.recipe import dump_recipe

    recipe = load_recipe({"model": {"name": "builtin:tiny-llama"}, "data": {"path": "builtin:tiny-chat"},
                          "train": {"method": "kto"}, "preference": {"desirable_weight": 1.5}})
    again = load_recipe(dump_recipe(recipe) if isinstance(dump_recipe(recipe), dict) else
                        __import__("yaml").safe_load(dump_recipe(recipe)))
    assert again.preference.desirable_weight == 1.5 and again.train.method == "kto"


def test_scored_ids_are_the_sft_masking_of_each_answer(tiny_tokenizer):
    """prompt + answer ids equal the SFT encoding of the conversation ending in that answer, and the answer ids are
    exactly its trained tokens (earlier assistant turns in the prompt are context)."""
    from qlora_kit.data.encode import IGNORE_INDEX, apply_chat_template_choice, encode_example
    from qlora_kit.data.preference import encode_preference

    apply_chat_template_choice(tiny_tokenizer, "chatml")
    prompt = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yo"},
              {"role": "user", "content": "again"}]
    example = Example(messages=prompt, chosen=[{"role": "assistant", "content": "hi there"}],
                      rejected=[{"role": "assistant", "content": "go away now"}])
    enc = encode_preference(tiny_tokenizer, example, "x:1")
    for answer, ids in ((example.chosen, enc.chosen_ids), (example.rejected, enc.rejected_ids)):
        sft = encode_example(tiny_tokenizer, Example(messages=[dict(m, weight=0) if m["role"] == "assistant" else m
                                                              for m in prompt] + answer), "responses", "x:1")
        assert enc.prompt_ids + ids == sft.input_ids
        assert ids == [t for t in sft.labels if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(enc.chosen_ids) == "hi there<|im_end|>\n"
    assert tiny_tokenizer.decode(enc.prompt_ids).endswith("<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n")


def test_lengths_keep_the_prompt_end_and_cut_answers():
    from qlora_kit.data.preference import EncodedPreference, fit_lengths

    row = EncodedPreference(list(range(10)), [100, 101, 102, 103], [200, 201], where="w", original_length=14)
    cut = fit_lengths(row, max_len=12, max_prompt=8)
    assert cut.prompt_ids == list(range(2, 10)) and cut.chosen_ids == [100, 101, 102, 103] and cut.truncated
    cut = fit_lengths(row, max_len=12)
    assert cut.prompt_ids == list(range(10)) and cut.chosen_ids == [100, 101] and cut.rejected_ids == [200, 201]
    assert fit_lengths(row, max_len=12, max_completion=1).chosen_ids == [100]
    assert fit_lengths(row, max_len=10) is None  # the prompt alone fills it: dropped


def test_cpu_log_prob_kernel_matches_log_softmax():
    """PlainLogProbs gives TRL's fused LM head a CPU path: same values and gradients as the plain computation."""
    import torch

    from qlora_kit.runtime import logprobs

    torch.manual_seed(0)
    hidden = torch.randn(7, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (7,))
    old, logprobs.TOKENS_PER_TILE = logprobs.TOKENS_PER_TILE, 3  # several tiles
    try:
        lp, ent, lsq, mean, top1 = logprobs.PlainLogProbs.apply(
            hidden, weight, None, targets, 2.0, 4096, 30.0, 0.5,
            ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"))
    finally:
        logprobs.TOKENS_PER_TILE = old
    z = 30.0 * torch.tanh((hidden @ weight.t()) * 0.5 / 30.0) / 2.0
    ref = torch.log_softmax(z, -1)
    assert torch.allclose(lp, ref.gather(1, targets[:, None]).squeeze(1), atol=1e-5)
    assert torch.allclose(ent, -(ref.exp() * ref).sum(-1), atol=1e-5)
    assert torch.allclose(lsq, torch.log((ref.exp() ** 2).sum(-1)), atol=1e-5)
    assert torch.allclose(mean, z.mean(-1), atol=1e-5)
    assert top1.tolist() == (z.argmax(-1) == targets).tolist()
    (g_h, g_w) = torch.autograd.grad(lp.sum() + ent.sum(), (hidden, weight))
    (r_h, r_w) = torch.autograd.grad(ref.gather(1, targets[:, None]).sum() - (ref.exp() * ref).sum(), (hidden, weight))
    assert torch.allclose(g_h, r_h, atol=1e-4) and torch.allclose(g_w, r_w, atol=1e-4)


def test_data_check_previews_both_answers(tmp_path, capsys):
    path = write_jsonl(tmp_path / "prefs.jsonl", [PAIR, CONV, {**PAIR, "rejected": "4."}])
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(path)}, train={"method": "dpo"})
    result = run_cli_here(capsys, "data", "check", str(recipe))
    assert result.returncode == 2  # the bad pair stops training: data check says so
    out = result.stdout
    assert "unusable preference pair (bad_preference): 1" in out and f"{path}:3: 'chosen' and 'rejected'" in out
    assert "training method: dpo; 2 rows to score (2 pairs)" in out
    assert "masking preview of the chosen answer" in out and "masking preview of the rejected answer" in out
    rejected = out.split("masking preview of the rejected answer")[1]
    assert "[[Five, I think.<|im_end|>\n  ]]" in rejected or "[[5.<|im_end|>\n  ]]" in rejected
    kto = write_jsonl(tmp_path / "kto.jsonl", [KTO, {**KTO, "completion": "5.", "label": False}, KTO])
    recipe = write_recipe(tmp_path / "k.yaml", data={"path": str(kto)}, train={"method": "kto"})
    result = run_cli_here(capsys, "data", "check", str(recipe))
    assert result.returncode == 0, result.stderr
    assert "KTO labels: 2 desirable, 1 undesirable" in result.stdout
    only_good = write_jsonl(tmp_path / "good.jsonl", [KTO, KTO])
    recipe = write_recipe(tmp_path / "g.yaml", data={"path": str(only_good)}, train={"method": "kto"})
    result = run_cli_here(capsys, "data", "check", str(recipe))
    assert result.returncode == 2
    assert "KTO needs both desirable (label true) and undesirable (label false) rows; found 2 and 0" in result.stderr


def test_shipped_preference_sets_load_in_both_forms():
    """builtin:tiny-prefs (plain and conversational pairs) and builtin:tiny-kto (both labels), for quick runs."""
    data = load_recipe({"model": {"name": "builtin:tiny-llama"}, "data": {"path": "builtin:tiny-prefs"}}).data
    items, _, fmt = load_examples(data, seed=0, method="dpo")
    assert fmt == "preference" and len(items) == 28 and {e.kind for _, e in items} == {"pair"}
    assert sum(len(e.messages) > 1 for _, e in items) >= 2  # conversational rows with a system or earlier turn
    data = load_recipe({"model": {"name": "builtin:tiny-llama"}, "data": {"path": "builtin:tiny-kto"}}).data
    items, _, fmt = load_examples(data, seed=0, method="kto")
    assert fmt == "kto" and sorted({e.label for _, e in items}) == [False, True] and len(items) == 24
