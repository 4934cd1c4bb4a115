"""`qlora-kit eval` on preference runs (#26): held-out pairs scored by every system (base, reference, adapter, merged,
each GGUF through llama.cpp), preference accuracy and mean margin with the bootstrap verdict, and the numbers
checked against an independent forward pass. The unit tests at the top need no model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from conftest import run_cli, write_jsonl, write_recipe
from qlora_kit.data.formats import Example
from qlora_kit.eval import preference as evpref
from qlora_kit.eval.preference_report import combine, judge_preference
from qlora_kit.eval.rows import to_row
from qlora_kit.recipe.options import EvalOptions

GOOD = ["apple", "river", "candle", "garden", "silver", "orange", "meadow", "forest"]
BAD = ["rubble", "sludge", "static", "gravel", "mildew", "rust", "cinder", "smog"]


def _pairs(n: int = 40, seed: int = 0, prompt: str = "Item {}: name one thing.") -> list[dict]:
    """Pleasant words preferred over unpleasant ones, in random combinations: the base model prefers the chosen
    answer about half the time, and a few DPO steps learn the preference."""
    rng = random.Random(seed)
    return [{"prompt": prompt.format(i), "chosen": f"{rng.choice(GOOD)}.", "rejected": f"{rng.choice(BAD)}."}
            for i in range(n)]


# --- without a model ---------------------------------------------------------------------------------------------

def _user(text):
    return [{"role": "user", "content": text}]


def _said(text):
    return [{"role": "assistant", "content": text}]


def test_generation_rows_of_preference_data_use_the_chosen_answer_or_a_desirable_completion():
    pair = Example(messages=_user("q"), chosen=_said("good"), rejected=_said("bad"))
    assert to_row("a:1", pair).reference == "good" and to_row("a:1", pair).prompt == tuple(_user("q"))
    assert to_row("a:2", Example(messages=_user("q"), completion=_said("fine"), label=True)).reference == "fine"
    assert to_row("a:3", Example(messages=_user("q"), completion=_said("awful"), label=False)) is None


def test_unpaired_rows_with_both_labels_for_a_prompt_become_pairs_and_leaked_rows_are_excluded():
    def kto(q, text, label):
        return Example(messages=_user(q), completion=_said(text), label=label)

    items = [("k:1", kto("q1", "good", True)), ("k:2", kto("q1", "bad", False)), ("k:3", kto("q1", "worse", False)),
             ("k:4", kto("q2", "fine", True)), ("k:5", kto("q3", "awful", False))]
    pairs, rest = evpref.pair_up(items)
    assert [(w, e.chosen[0]["content"], e.rejected[0]["content"]) for w, e in pairs] == [
        ("k:1 vs k:2", "good", "bad"), ("k:1 vs k:3", "good", "worse")]
    assert [w for w, _ in rest] == ["k:4", "k:5"]
    clean, leaked = evpref.split_leaked(items, [("t:9", kto("q1", "worse", False)), ("t:8", kto("q2", "fine", False))])
    assert leaked == ["k:3"] and len(clean) == 4, "the same prompt and completion with another label is not a repeat"


def test_accuracy_is_the_share_of_positive_margins_and_unpaired_rows_give_a_per_token_gap():
    pairs = [{"logp_chosen": -1.0, "logp_rejected": -3.0, "margin": 2.0},
             {"logp_chosen": -2.0, "logp_rejected": -1.0, "margin": -1.0},
             {"logp_chosen": -1.0, "logp_rejected": -1.0, "margin": 0.0}]
    unpaired = [{"label": True, "logp_per_token": -0.5}, {"label": True, "logp_per_token": -1.5},
                {"label": False, "logp_per_token": -2.5}]
    s = evpref.summarize(pairs, unpaired)
    assert s["preference_accuracy"] == pytest.approx(1 / 3), "a tie is not a preference"
    assert s["mean_margin"] == pytest.approx(1 / 3) and s["mean_logp_rejected"] == pytest.approx(-5 / 3)
    assert s["desirable_logp_per_token"] == -1.0 and s["undesirable_logp_per_token"] == -2.5
    assert s["unpaired_gap"] == 1.5
    assert set(evpref.FIELDS) == {"preference_accuracy", "mean_margin", "mean_logp_chosen", "mean_logp_rejected",
                                  "desirable_logp_per_token", "undesirable_logp_per_token", "unpaired_gap"}
    assert evpref.absent("fewshot")["preference_not_scored"].startswith("its prompt holds training examples")
    assert evpref.absent("recorded:old.jsonl")["preference_accuracy"] is None
    assert evpref.not_scored("gguf:q8_0") is None and evpref.not_scored("reference") is None


def test_answer_log_probs_come_from_the_positions_before_each_answer_token():
    """Position t predicts token t + 1: a 2-token prompt and a 3-token answer read rows 1, 2 and 3, from torch or
    from llama.cpp's numpy scores alike."""
    import numpy as np
    import torch

    from qlora_kit.eval.systems import answer_nll

    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    answer = [4, 0, 9]
    expected = -sum(logits[1 + i].log_softmax(-1)[tok].item() for i, tok in enumerate(answer))
    assert answer_nll(logits, 2, answer) == pytest.approx(expected, abs=1e-5)
    assert answer_nll(np.vstack([logits.numpy(), np.zeros((3, 11), np.float32)]), 2, answer) == \
        pytest.approx(expected, abs=1e-5), "llama.cpp's score rows past the sequence are never read"


def _results(**margins):
    """system -> per-pair margins."""
    out = {}
    for name, values in margins.items():
        pairs = [{"logp_chosen": m, "logp_rejected": 0.0, "margin": m} for m in values]
        out[name] = {"preference_rows": {"pairs": pairs, "unpaired": []}, **evpref.summarize(pairs, [])}
    return out


def test_preference_verdict_says_better_worse_or_unclear_from_the_interval():
    opts = EvalOptions()
    better, warnings = judge_preference(_results(base=[-1.0] * 15 + [1.0] * 15, adapter=[2.0] * 28 + [-1.0] * 2,
                                                 merged=[2.0] * 28 + [-1.0] * 2,
                                                 **{"gguf:q4_k_m": [2.0] * 20 + [-1.0] * 10}), "dpo", opts)
    assert better["outcome"] == "better" and better["tuned"] == "adapter" and better["baseline"] == "base"
    assert better["text"].startswith("Preference tuning (dpo) beat the base model by 43 points of preference "
                                     "accuracy (95% interval +")
    assert "over 30 pairs); the mean margin (log p chosen - log p rejected) went from +0.00 to +1.80 nats" in \
        better["text"]
    assert better["text"].endswith("; Q4_K_M keeps 38% of the gain.")
    assert better["difference"] == pytest.approx(13 / 30, abs=1e-6) and better["margin_difference"] == 1.8
    assert warnings == ["gguf:q4_k_m scores 27 points of preference_accuracy below the merged model (more than 5): "
                        "try a larger quantization type"]
    worse, _ = judge_preference(_results(base=[1.0] * 30, reference=[1.0] * 30, adapter=[-1.0] * 30), "kto", opts)
    assert worse["outcome"] == "worse" and worse["baseline"] == "reference"
    assert worse["text"].startswith("Preference tuning (kto) did NOT help: the reference model (the starting "
                                    "adapter) prefers the chosen answers more often, by 100 points")
    unclear, _ = judge_preference(_results(base=[1.0, -1.0] * 5, adapter=[-1.0, 1.0] * 5), "simpo", opts)
    assert unclear["outcome"] == "unclear" and "adapter vs the base model differ by +0 points" in unclear["text"]
    none, _ = judge_preference(_results(adapter=[1.0]), "dpo", opts)
    assert none["outcome"] == "none" and none["text"].startswith("no preference verdict: compare a tuned system")
    both = combine(better, {"text": "Fine-tuning did not clearly help: x.", "outcome": "unclear"})
    assert both["text"] == better["text"] + " On generations scored against the chosen answers, fine-tuning did " \
                                            "not clearly help: x."
    assert both["outcome"] == "better" and both["generation"]["outcome"] == "unclear"


# --- a real (tiny) DPO run -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    """8 DPO steps on pleasant-over-unpleasant words, merged and exported to F16 and Q8_0."""
    tmp = tmp_path_factory.mktemp("pref")
    data = write_jsonl(tmp / "pairs.jsonl", _pairs())
    recipe = write_recipe(tmp / "dpo.yaml", data={"path": str(data), "eval_split": 0.3},
                          train={"max_steps": 8, "lr": 3e-3, "batch_size": 4, "method": "dpo"},
                          merge={"enabled": True}, export={"enabled": True, "quant": ["f16", "q8_0"]})
    result = run_cli("train", str(recipe))  # a DPO adapter merges and exports (both checked) like an SFT one
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "runs" / "dpo"


@pytest.fixture(scope="module")
def dpo_eval(dpo_run):
    result = run_cli("eval", str(dpo_run), "--max-new-tokens", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    out = dpo_run / "eval"
    report = json.loads((out / "report.json").read_text())
    lines = [json.loads(line) for line in (out / "preference.jsonl").read_text().splitlines()]
    return report, lines, result.stdout


SYSTEMS = ["base", "adapter", "merged", "gguf:f16", "gguf:q8_0"]


@pytest.mark.slow
def test_every_system_scores_the_held_out_pairs(dpo_eval):
    report, lines, stdout = dpo_eval
    assert report["systems"] == SYSTEMS, "a preference run's default systems: no fewshot"
    assert report["method"] == "dpo" and report["rows"] == 12
    pref = report["preference"]
    assert {k: v for k, v in pref.items() if k != "score"} == {
        "rows_from": "the run's eval split", "pairs": 12, "pairs_from_unpaired_rows": 0, "unpaired_rows": 0,
        "leaked_rows_excluded": 0, "truncated": 0, "dropped_too_long": 0}
    assert len(lines) == 12 and all(set(line["systems"]) == set(SYSTEMS) for line in lines)
    for name in SYSTEMS:
        r = report["results"][name]
        assert set(evpref.FIELDS) <= set(r) and "preference_rows" not in r and "rows" not in r
        margins = [line["systems"][name]["margin"] for line in lines]
        assert 0.0 <= r["preference_accuracy"] <= 1.0
        assert r["preference_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 12, abs=1e-6)
        assert r["mean_margin"] == pytest.approx(sum(margins) / 12, abs=1e-5)
        assert all(s["margin"] == pytest.approx(s["logp_chosen"] - s["logp_rejected"], abs=2e-6)
                   for s in (line["systems"][name] for line in lines))
        assert r["unpaired_gap"] is None and r["exact_match"] is not None, "the generation metrics stay"
    markdown = (Path(report["run"]) / "eval" / "report.md").read_text()
    assert "| adapter | " in markdown.split("## Preferences (dpo)")[1]
    assert report["verdict"]["text"] in stdout


@pytest.mark.slow
def test_the_merged_models_scores_equal_an_independent_forward_pass(dpo_run, dpo_eval):
    """log_softmax + gather over the ids training scored, outside eval's code: the same numbers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_kit.data.prepare import load_examples
    from qlora_kit.data.preference import encode_preference
    from qlora_kit.recipe import load_recipe

    _, lines, _ = dpo_eval
    recipe = load_recipe(dpo_run / "recipe.yaml")
    _, held, _ = load_examples(recipe.data, recipe.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(dpo_run / "adapter")
    model = AutoModelForCausalLM.from_pretrained(dpo_run / "merged", dtype=torch.float32).eval()

    def logp(prompt, answer):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].float()
        steps = logits.log_softmax(-1)[len(prompt) - 1: -1]
        return steps.gather(-1, torch.tensor(answer)[:, None]).sum().item()

    by_where = {line["where"]: line["systems"]["merged"] for line in lines}
    assert sorted(by_where) == sorted(w for w, _ in held)
    for where, example in held:
        enc = encode_preference(tokenizer, example, where)
        assert by_where[where]["logp_chosen"] == pytest.approx(logp(enc.prompt_ids, enc.chosen_ids), abs=1e-4)
        assert by_where[where]["logp_rejected"] == pytest.approx(logp(enc.prompt_ids, enc.rejected_ids), abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("quant, tolerance", [("f16", 0.02), ("q8_0", 0.25)])
def test_gguf_log_probs_through_llama_cpp_agree_with_the_merged_model(dpo_eval, quant, tolerance):
    """Summed over an answer's ~10 tokens, in nats; measured: F16 within 1e-3, Q8_0 within 0.04."""
    report, lines, _ = dpo_eval
    for line in lines:
        merged, gguf = line["systems"]["merged"], line["systems"][f"gguf:{quant}"]
        for side in ("logp_chosen", "logp_rejected"):
            assert gguf[side] == pytest.approx(merged[side], abs=tolerance), (line["where"], side)
    for line in lines:  # the adapter on the 4-bit base and its dequantized merge are the same model
        assert line["systems"]["adapter"]["margin"] == pytest.approx(line["systems"]["merged"]["margin"], abs=1e-3)
    assert report["results"][f"gguf:{quant}"]["preference_accuracy"] == report["results"]["merged"][
        "preference_accuracy"]


@pytest.mark.slow
def test_the_verdict_says_preference_tuning_beat_the_base_model(dpo_eval):
    report, _, _ = dpo_eval
    verdict, results = report["verdict"], report["results"]
    assert results["adapter"]["preference_accuracy"] > results["base"]["preference_accuracy"]
    assert results["adapter"]["mean_margin"] > results["base"]["mean_margin"]
    assert verdict["outcome"] == "better" and verdict["metric"] == "preference_accuracy"
    assert verdict["interval95"][0] > 0 and verdict["margin_interval95"][0] > 0
    gain = results["adapter"]["preference_accuracy"] - results["base"]["preference_accuracy"]
    assert verdict["difference"] == pytest.approx(gain, abs=1e-5)  # both rounded to 6 places
    assert verdict["text"].startswith(f"Preference tuning (dpo) beat the base model by {gain * 100:.0f} points of "
                                      "preference accuracy (95% interval +")
    assert "over 12 pairs); the mean margin (log p chosen - log p rejected) went from " in verdict["text"]
    assert "F16 keeps 100% of the gain, Q8_0 keeps 100% of the gain." in verdict["text"]
    assert verdict["generation"]["metric"] == "exact_match"
    assert " On generations scored against the chosen answers, fine-tuning " in verdict["text"]


@pytest.mark.slow
def test_unpaired_rows_pair_up_by_prompt_and_fewshot_gets_no_preference_scores(dpo_run, tmp_path):
    """KTO-style rows through --data: a prompt with both labels is a pair, the rest give the per-token gap."""
    rows = []
    for i, p in enumerate(_pairs(12, seed=7, prompt="Thing {}: say one word.")):  # prompts training never saw
        if i % 3 != 2:
            rows.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        if i % 3 != 1:
            rows.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    result = run_cli("eval", str(dpo_run), "--data", str(data), "--systems", "base,fewshot,adapter",
                     "--max-new-tokens", "1", "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    pref = report["preference"]
    assert (pref["pairs"], pref["pairs_from_unpaired_rows"], pref["unpaired_rows"]) == (4, 4, 8)
    assert report["rows"] == 8, "generations: the desirable completions only"
    fewshot = report["results"]["fewshot"]
    assert fewshot["preference_accuracy"] is None and fewshot["exact_match"] is not None
    assert fewshot["preference_not_scored"].startswith("its prompt holds training examples")
    lines = [json.loads(x) for x in (tmp_path / "eval" / "preference.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["pair"] * 4 + ["unpaired"] * 8 and " vs " in lines[0]["where"]
    for name in ("base", "adapter"):
        r = report["results"][name]
        good = [x["systems"][name]["logp_per_token"] for x in lines[4:] if x["label"]]
        bad = [x["systems"][name]["logp_per_token"] for x in lines[4:] if not x["label"]]
        assert len(good) == len(bad) == 4 and all(v < 0 for v in good + bad)
        assert r["unpaired_gap"] == pytest.approx(sum(good) / 4 - sum(bad) / 4, abs=1e-5)
        assert math.isfinite(r["mean_margin"])
    assert "fewshot: not scored on preferences" in (tmp_path / "eval" / "report.md").read_text()


@pytest.mark.slow
def test_a_run_that_continued_an_adapter_is_measured_against_that_adapter(dpo_run, dpo_eval, tmp_path):
    """model.adapter (DPO on top of the DPO run): the `reference` system is the starting adapter, so its scores are
    the first run's adapter's, pair by pair; and it is the verdict's baseline."""
    data = dpo_run.parent.parent / "pairs.jsonl"  # the same file: the same held-out pairs, named the same
    recipe = write_recipe(tmp_path / "again.yaml", model={"adapter": str(dpo_run)},
                          data={"path": str(data), "eval_split": 0.3},
                          train={"max_steps": 2, "lr": 3e-3, "batch_size": 4, "method": "dpo"})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("eval", str(tmp_path / "runs" / "again"), "--max-new-tokens", "1", "--samples", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "runs" / "again" / "eval"
    report = json.loads((out / "report.json").read_text())
    assert report["systems"] == ["base", "reference", "adapter"] and report["verdict"]["baseline"] == "reference"
    first = {x["where"]: x["systems"]["adapter"] for x in dpo_eval[1]}
    for line in (json.loads(x) for x in (out / "preference.jsonl").read_text().splitlines()):
        assert line["systems"]["reference"]["margin"] == pytest.approx(first[line["where"]]["margin"], abs=1e-4)
        assert line["systems"]["base"]["margin"] != pytest.approx(line["systems"]["reference"]["margin"], abs=1e-3)
    result = run_cli("eval", str(dpo_run), "--systems", "reference", "--out", str(tmp_path / "no"))
    assert result.returncode == 2 and result.stderr.strip() == (
        "qlora-kit: error: --systems reference: the run started from no trained adapter (model.adapter is unset), "
        "so the model it was measured against is the base; name base instead")
