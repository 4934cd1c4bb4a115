"""Rules several stages share give one answer on every path that uses them, so a copy that drifts from the
original fails here. These replace tests/test_one_home.py, which grepped the source for the file each rule was
defined in: where a rule lives may change (issue #25), what it answers may not."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qlora_kit as qk
from conftest import write_recipe

DUMP = "  boom: the first line\nTraceback (most recent call last):\n  a library's hint"


def test_an_error_is_told_by_its_first_line_in_messages_and_events(tmp_path):
    from qlora_kit.errors import first_line
    from qlora_kit.eventlog import EventLog, read_events, run_stage, stage

    assert first_line(ValueError(DUMP)) == "boom: the first line"
    assert (first_line(ValueError("")), first_line(ValueError(" \n"), "ValueError")) == ("", "ValueError")
    seen = []
    log = EventLog(deliver=[seen.append])
    for exc, told in ((ValueError(DUMP), "boom: the first line"), (ValueError(), "ValueError")):
        with pytest.raises(ValueError), stage(log, "merge"):
            raise exc
        assert (seen[-1].status, seen[-1].error) == ("failed", told)
    # A stage run by hand on a finished run ends its log again, naming the failure the same way.
    (tmp_path / "run.json").write_text(json.dumps({"status": "complete", "run_id": "abc"}))
    trainer = EventLog()
    trainer.attach(tmp_path / "events.jsonl", "abc")
    trainer.emit("run_start", run_dir=str(tmp_path), backend="hf", device="cpu")
    trainer.emit("run_end", status="complete")
    with pytest.raises(ValueError), run_stage(EventLog(), tmp_path):
        raise ValueError(DUMP)
    assert read_events(tmp_path / "events.jsonl")[-1].error == "ValueError: boom: the first line"


def _logit_pairs(seed: int, noise: float):
    rng = np.random.default_rng(seed)
    reference = [rng.normal(size=(n, 40)).astype(np.float32) for n in (5, 9)]
    return reference, [r + noise * rng.normal(size=r.shape).astype(np.float32) for r in reference]


@pytest.mark.parametrize("noise", [0.0, 0.05, 3.0])
def test_merge_fidelity_and_gguf_verification_measure_the_same_logits_alike(noise):
    """The merge judges merged vs adapter and the export judges llama.cpp vs transformers with the same measure:
    the same logits give the same max |delta|, KL and top-1 agreement on both paths, and the numbers are right."""
    import torch

    from qlora_kit.data.encode import Encoded
    from qlora_kit.gguf.verify.verify import compare as verify_compare
    from qlora_kit.merging.fidelity import compare as fidelity_compare

    reference, candidate = _logit_pairs(7, noise)
    rows = [Encoded(input_ids=list(range(len(r))), labels=list(range(len(r)))) for r in reference]
    merge = fidelity_compare([torch.from_numpy(r) for r in reference], [torch.from_numpy(c) for c in candidate],
                             rows).as_dict()
    export = verify_compare(reference, candidate)
    ref, cand = np.concatenate(reference).astype(np.float64), np.concatenate(candidate).astype(np.float64)
    logp = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    logq = cand - np.log(np.exp(cand).sum(-1, keepdims=True))
    expected = {"max_abs_logit_diff": np.abs(ref - cand).max(), "tokens": len(ref),
                "mean_kl": (np.exp(logp) * (logp - logq)).sum(-1).mean(),
                "top1_agreement": (ref.argmax(-1) == cand.argmax(-1)).mean()}
    for key, value in expected.items():
        assert merge[key] == pytest.approx(export[key], abs=1e-6), key
        assert export[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_held_out_rows_are_the_eval_split_else_training_rows_else_fixed_texts(tiny_model_dir, tmp_path):
    """The rows the merge's fidelity check and the export's logit check measure on (test_export.py's
    test_probe_rows_are_cut_so_logit_memory_does_not_grow_with_max_seq_length pins the export to these rows,
    test_merge.py's test_dequantized_fp32_merge_matches_the_trained_adapter the merge to the eval split)."""
    from transformers import AutoTokenizer

    from qlora_kit.data.encode import apply_chat_template_choice
    from qlora_kit.data.held_out import held_out_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    apply_chat_template_choice(tokenizer, "chatml")  # as the adapter's and the merged model's tokenizers carry it
    data, held = tmp_path / "chat.jsonl", tmp_path / "held.jsonl"
    for path, word in ((data, "train"), (held, "held")):
        path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{word} question {i}"},
                                                         {"role": "assistant", "content": f"{word} answer {i}"}]})
                                + "\n" for i in range(20)))
    for extra, expected, content in (({"eval_path": str(held)}, "eval split", "held answer"),
                                     ({"eval_split": 0.25}, "eval split", "train answer"),
                                     ({}, "training rows", "train answer")):
        recipe = qk.load_recipe(write_recipe(tmp_path / "recipe.yaml", data={"path": str(data), **extra}))
        source, rows = held_out_rows(recipe, tokenizer, 3)
        assert (source, len(rows)) == (expected, 3)
        assert all(content in tokenizer.decode(r.input_ids) for r in rows)
    data.unlink()
    source, fixed = held_out_rows(recipe, tokenizer, 5)
    assert source.startswith("fixed texts") and len(fixed) == 3
    assert "quick brown fox" in tokenizer.decode(fixed[0].input_ids)


def _recipe(tmp_path, **sections):
    return qk.load_recipe(write_recipe(tmp_path / "recipe.yaml", **sections))


def test_the_resolved_recipe_records_the_runtime_training_uses(tmp_path):
    from qlora_kit.training.auto import resolve

    recipe = _recipe(tmp_path, train={"device": "cpu", "seed": 11, "gradient_checkpointing": "auto"})
    resolved, runtime = resolve(recipe)
    assert (runtime.device, runtime.dtype, runtime.seed) == ("cpu", "float32", 11)
    assert (resolved.train.device, resolved.model.dtype) == (runtime.device, runtime.dtype)
    assert resolved.train.gradient_checkpointing is runtime.gradient_checkpointing is False
    assert runtime.device_map == {"": "cpu"} and str(runtime.torch_dtype) == "torch.float32"


@pytest.mark.parametrize("device, bf16, dtype", [("cpu", False, "float32"), ("cuda", True, "bfloat16"),
                                                 ("cuda", False, "float16")])
def test_plan_predicts_the_dtype_that_training_picks(tmp_path, tiny_model_dir, monkeypatch, device, bf16, dtype):
    import torch

    from qlora_kit.planner.inputs import plan_input_for
    from qlora_kit.planner.shape import shape_from_config
    from qlora_kit.training.auto import pick_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    recipe = _recipe(tmp_path)
    shape = shape_from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    planned = plan_input_for(recipe, shape, "hf", device, 64, bf16=bf16).dtype
    assert planned == pick_dtype(recipe.model.dtype, device) == dtype


def test_plan_counts_the_tensors_the_hf_backend_trains_embeddings_and_head_in_full(tmp_path, tiny_model_dir):
    """Named in target_modules, embed_tokens and lm_head are trained in full (not with LoRA) by the backend, and
    the planner sizes its optimizer states for exactly those tensors."""
    from qlora_kit.model.backends import get_backend
    from qlora_kit.planner.estimate import trainable_tensors
    from qlora_kit.planner.inputs import plan_input_for
    from qlora_kit.planner.shape import shape_from_config
    from qlora_kit.training.auto import resolve

    targets = ["q_proj", "down_proj", "embed_tokens", "lm_head"]
    recipe = _recipe(tmp_path, model={"backend": "hf", "load_in_4bit": False},
                     lora={"r": 4, "target_modules": targets}, train={"device": "cpu"})
    recipe, runtime = resolve(recipe)
    backend = get_backend("hf")
    backend.prepare(recipe.model)
    model, _ = backend.load(str(tiny_model_dir), recipe.model, recipe.lora, runtime)
    trained = sorted(p.numel() for p in model.parameters() if p.requires_grad)
    shape = shape_from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    planned = sorted(trainable_tensors(shape, plan_input_for(recipe, shape, "hf", "cpu", 64)))
    assert trained == planned
    assert planned.count(shape.vocab_size * shape.hidden) == 2  # the two full copies
