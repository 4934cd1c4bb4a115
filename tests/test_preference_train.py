"""Preference tuning (#26) trains for real on the tiny model: every method from every format it accepts, the
reference is the base with the adapter off (no second model), resume is exact, SFT -> DPO continues the SFT
adapter against itself, and DPO's peak memory stays within 10% of SFT on the same sequences."""

from __future__ import annotations

import gc
import json
import math
import random
from pathlib import Path

import pytest

from conftest import (ROOT, assert_same_losses, assert_seq_without_gaps, read_events, run_cli, step_losses,
                      write_jsonl, write_recipe)

pytestmark = pytest.mark.slow

TRAIN = {"max_steps": 6, "lr": 2e-3, "batch_size": 4, "logging_steps": 1, "save_steps": 1000}


def _pairs(n: int = 24, seed: int = 0) -> list[dict]:
    """Terse right answers preferred over chatty wrong ones."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append({"prompt": f"What is {a} plus {b}?", "chosen": f"{a + b}.",
                     "rejected": f"Well, I believe it is about {a + b + rng.randint(1, 9)} or so."})
    return rows


def _as(fmt: str, rows: list[dict]) -> list[dict]:
    if fmt == "conversational":
        return [{"prompt": [{"role": "user", "content": r["prompt"]}],
                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    if fmt == "openai_dpo":
        return [{"input": {"messages": [{"role": "user", "content": r["prompt"]}]},
                 "preferred_output": [{"role": "assistant", "content": r["chosen"]}],
                 "non_preferred_output": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    if fmt == "kto":
        return [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                for r in rows for side in ("chosen", "rejected")]
    return rows


def _train(tmp_path, name: str, method: str, fmt: str = "plain", backend: str = "hf", **sections):
    data = write_jsonl(tmp_path / f"{name}.jsonl", _as(fmt, _pairs()))
    recipe = write_recipe(tmp_path / f"{name}.yaml", model={"backend": backend, **sections.pop("model", {})},
                          data={"path": str(data), **sections.pop("data", {})},
                          train={**TRAIN, "method": method, **sections.pop("train", {})}, **sections)
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "runs" / name


METRICS = {"dpo": {"reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "logp_chosen"},
           "kto": {"reward_chosen", "reward_rejected", "kl"},
           "orpo": {"reward_margin", "reward_accuracy", "log_odds_ratio", "nll_loss"},
           "simpo": {"reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"}}


@pytest.mark.parametrize("method, fmt, backend", [
    ("dpo", "plain", "hf"), ("dpo", "conversational", "hf"), ("dpo", "openai_dpo", "hf"), ("dpo", "plain", "unsloth"),
    ("kto", "kto", "hf"), ("kto", "plain", "hf"), ("orpo", "plain", "hf"), ("simpo", "conversational", "hf")])
def test_each_method_trains_from_each_format(tmp_path, method, fmt, backend):
    import jsonschema

    run_dir = _train(tmp_path, f"{method}-{fmt}-{backend}", method, fmt, backend, data={"eval_split": 0.25})
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, 7)) and losses[6] < losses[1], losses
    if method in ("dpo", "kto"):  # the reference is the starting model: the first loss is the method's at zero reward
        assert losses[1] == pytest.approx(math.log(2) if method == "dpo" else 0.5, abs=1e-4)
    steps = read_events(run_dir, "step")
    assert all(METRICS[method] <= {k for k, v in s["preference"].items() if v is not None} for s in steps)
    if "reward_accuracy" in METRICS[method]:
        assert steps[-1]["preference"]["reward_margin"] > 0
    held_out = read_events(run_dir, "eval")[-1]["preference"]
    assert METRICS[method] <= {k for k, v in held_out.items() if v is not None}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["tokens_per_second"] > 0 and metrics["tokens_seen"] > 0  # counted for every method's batches
    assert metrics["method"] == method and metrics["preference"] == {
        k: v for k, v in steps[-1]["preference"].items() if v is not None}
    schema = json.loads(run_cli("events-schema").stdout)
    validator = jsonschema.Draft202012Validator(schema)
    for event in assert_seq_without_gaps(run_dir):
        validator.validate(event)
    with pytest.raises(jsonschema.ValidationError):  # the preference block is checked too, not waved through
        validator.validate({**steps[-1], "preference": {**steps[-1]["preference"], "reward_acc": 1.0}})
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()


def test_reference_is_the_base_with_the_adapter_off(tmp_path, tiny_model_dir, monkeypatch):
    """No second model object: TRL's reference forward runs the same weights with the adapter disabled, so after
    training it still gives the starting model's log-probabilities while the trained model's have moved."""
    import torch
    from transformers import LlamaForCausalLM

    from qlora_kit.data.encode import apply_chat_template_choice
    from qlora_kit.data.formats import Example
    from qlora_kit.data.preference import encode_preferences
    from qlora_kit.model.backends import get_backend
    from qlora_kit.recipe import load_recipe
    from qlora_kit.training.auto import resolve
    from qlora_kit.training.trainer import build_trainer
    import trl.trainer.utils as trl_utils

    # build_trainer installs the CPU log-prob kernel; leave TRL as found for the other tests in this process
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", trl_utils._ChunkedLogProbFunction)

    recipe, rt = resolve(load_recipe({"model": {"name": str(tiny_model_dir), "backend": "hf", "max_seq_length": 64},
                                      "data": {"path": "builtin:tiny-chat"}, "train": {**TRAIN, "method": "dpo"}}))
    model, tokenizer = get_backend("hf").load(str(tiny_model_dir), recipe.model, recipe.lora, rt)
    apply_chat_template_choice(tokenizer, "chatml")
    items = [(f"row {i}", Example(messages=[{"role": "user", "content": r["prompt"]}],
                                  chosen=[{"role": "assistant", "content": r["chosen"]}],
                                  rejected=[{"role": "assistant", "content": r["rejected"]}]))
             for i, r in enumerate(_pairs(8))]
    rows = encode_preferences(tokenizer, items, 64).rows
    trainer = build_trainer(recipe, rt, model, tokenizer, rows, [], str(tmp_path / "out"), [], save=False)
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    gc.collect()
    assert sum(isinstance(o, LlamaForCausalLM) for o in gc.get_objects()) == 1  # one model in the process
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))

    def policy():
        with torch.no_grad():
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                                fused_lm_head=True, use_cache=False)
        return out.log_probs.sum(1)

    before = policy()
    ref_before = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
    assert torch.allclose(before, ref_before, atol=1e-5)  # a fresh adapter (B = 0) is the base
    trainer.train()
    after, ref_after = policy(), torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
    assert torch.allclose(ref_after, ref_before, atol=1e-5)
    assert (after - before).abs().max() > 1e-2


def test_dpo_resume_after_an_interruption_gives_identical_losses(tmp_path):
    from test_train import _train_until

    data = write_jsonl(tmp_path / "p.jsonl", _pairs())
    sections = {"model": {"backend": "hf"}, "data": {"path": str(data)},
                "train": {**TRAIN, "method": "dpo", "max_steps": 10}, "lora": {"dropout": 0.1}}
    straight = write_recipe(tmp_path / "straight.yaml", **sections)
    assert run_cli("train", str(straight)).returncode == 0
    recipe = write_recipe(tmp_path / "resumed.yaml", **sections)
    run_dir = tmp_path / "runs" / "resumed"
    first = _train_until(recipe, run_dir, 3, lambda proc: (run_dir / "STOP").touch())
    assert first.returncode == 130, first.stderr[-2000:]
    stopped = json.loads((run_dir / "run.json").read_text())["step"]
    assert 3 <= stopped < 10
    second = run_cli("train", str(recipe), "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same_losses(run_dir, step_losses(tmp_path / "runs" / "straight"))
    reference = {e["step"]: e["preference"] for e in read_events(tmp_path / "runs" / "straight", "step")}
    for event in read_events(run_dir, "step"):
        for key, value in event["preference"].items():
            if value is None:
                assert reference[event["step"]][key] is None
                continue
            assert value == pytest.approx(reference[event["step"]][key], rel=1e-5, abs=1e-6), (event["step"], key)


def test_sft_then_dpo_continues_the_sft_adapter_against_itself(tmp_path):
    sft = write_recipe(tmp_path / "sft.yaml", model={"backend": "hf"},
                       train={"max_steps": 8, "lr": 3e-3, "batch_size": 4, "logging_steps": 1})
    assert run_cli("train", str(sft)).returncode == 0
    run_dir = _train(tmp_path, "dpo", "dpo", model={"adapter": str(tmp_path / "runs" / "sft")},
                     merge={"enabled": True})
    first = read_events(run_dir, "step")[0]
    # The reference is the SFT model, not the raw base: at step 1 the model is exactly its reference.
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["preference"]["reward_chosen"] == pytest.approx(0, abs=1e-6)
    recorded = (run_dir / "recipe.yaml").read_text()
    assert "adapter: " in recorded and "r: 16" in recorded  # the SFT adapter's own LoRA shape
    assert (run_dir / "merged" / "config.json").is_file()  # a DPO adapter merges like an SFT one
    wrong = run_cli("train", str(write_recipe(tmp_path / "bad.yaml", model={"adapter": str(tmp_path / "nowhere")},
                                              train={"method": "dpo"})))
    assert wrong.returncode == 2 and "model.adapter: " in wrong.stderr and "no such directory" in wrong.stderr


def _sequences_as_sft(pairs: list[dict]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r[side]}]}
            for r in pairs for side in ("chosen", "rejected")]


def test_dpo_peak_memory_is_within_ten_percent_of_sft_on_the_same_sequences(tmp_path):
    """A model big enough that a second copy would show (~170 MB of fp32 weights, ~17% of the process): DPO on N
    pairs (batch B: 2B sequences, plus the reference forward) against SFT on the same 2N sequences (batch 2B)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from qlora_kit.model.builtin import materialize

    tok_dir = materialize("builtin:tiny-llama")
    model_dir = tmp_path / "mid-llama"
    config = LlamaConfig(vocab_size=AutoTokenizer.from_pretrained(tok_dir).vocab_size + 64, hidden_size=512,
                         intermediate_size=2048, num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=256, tie_word_embeddings=False)
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(model_dir)
    pairs = _pairs(16)
    common = {"model": {"name": str(model_dir), "backend": "hf", "load_in_4bit": False, "max_seq_length": 64},
              "lora": {"r": 8, "alpha": 16}}
    peaks = {}
    for method, rows, batch in (("dpo", pairs, 2), ("sft", _sequences_as_sft(pairs), 4)):
        data = write_jsonl(tmp_path / f"{method}.jsonl", rows)
        recipe = write_recipe(tmp_path / f"{method}-mem.yaml", data={"path": str(data)},
                              train={**TRAIN, "method": method, "batch_size": batch, "max_steps": 4}, **common)
        result = run_cli("train", str(recipe))
        assert result.returncode == 0, result.stderr[-3000:]
        peaks[method] = json.loads((tmp_path / "runs" / f"{method}-mem" / "metrics.json").read_text())[
            "peak_memory_bytes"]
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    print(f"peak memory: {peaks}, weights {weights}")
    # The bound below means something only if a second copy of the weights would break it. The process around the
    # model differs between machines (CI measured 979 MB for SFT where this one measured 874 MB), so the check is
    # against the bound itself rather than a fixed share.
    assert weights > 0.10 * peaks["sft"], (weights, peaks)
    assert peaks["dpo"] <= 1.10 * peaks["sft"], peaks
