"""The planner: exact terms against real objects (transformers models on the meta device, bitsandbytes quant
states), its verdicts and search, and its one-line errors. The comparison with a real training run's tensors is in
test_bench.py (both backends, through the bench cells)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from qlora_kit.planner.estimate import (PlanInput, estimate, largest_fitting, nf4_bytes, optimizer_bytes,
                                     runtime_bytes)
from qlora_kit.planner.shape import shape_from_config

from conftest import run_cli, write_recipe

# Small dimensions, real layouts: biases (qwen2), q/k norms (qwen3, gemma3), four norms (gemma2/3), fused
# projections (phi3), explicit head_dim (gemma), tied and untied embeddings.
CONFIGS = {
    "llama": dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False),
    "mistral": dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
                    num_key_value_heads=2, tie_word_embeddings=False),
    "qwen2": dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3": dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, tie_word_embeddings=True),
    "phi3": dict(vocab_size=300, hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, tie_word_embeddings=False, pad_token_id=0),
    "gemma2": dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32),
    "gemma3_text": dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32),
}


def _meta_model(model_type: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **CONFIGS[model_type])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return config, model


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_shape_matches_transformers_model(model_type):
    import torch

    config, model = _meta_model(model_type)
    shape = shape_from_config(config.to_dict())
    unique = {id(p): p.numel() for p in model.parameters()}  # tied weights once
    assert shape.params == sum(unique.values())
    layer = model.model.layers[0]
    linears = sorted((name.rsplit(".", 1)[-1], m.in_features, m.out_features, m.bias is not None)
                     for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear))
    assert linears == sorted((lin.name, lin.in_features, lin.out_features, lin.bias) for lin in shape.layer_linears)
    assert shape.tied_embeddings == (model.lm_head.weight is model.model.embed_tokens.weight)


@pytest.mark.parametrize("out_features,in_features", [(64, 64), (160, 64), (7, 300), (128, 33)])
def test_nf4_bytes_equal_bitsandbytes_quant_state(out_features, in_features):
    import bitsandbytes.functional as F
    import torch

    weight = torch.randn(out_features, in_features)
    packed, state = F.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    tensors = [packed, state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
    assert nf4_bytes(weight.numel()) == sum(t.numel() * t.element_size() for t in tensors)


def test_four_bit_weights_cost_about_half_a_byte_per_parameter():
    shape = shape_from_config(json.loads(_llama_8b()))
    per_param = shape.layers * sum(nf4_bytes(lin.numel) for lin in shape.layer_linears) / shape.linear_params
    assert per_param == pytest.approx(0.516, abs=0.001)
    assert shape.params == 8_030_261_248  # Llama 3.1 8B's published parameter count


def test_adamw_8bit_bytes_equal_bitsandbytes_states():
    import bitsandbytes as bnb
    import torch

    params = [torch.nn.Parameter(torch.randn(n)) for n in (100, 4095, 4096, 70000)]
    opt = bnb.optim.AdamW8bit(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    seen, total = set(), 0
    for state in opt.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
    assert optimizer_bytes("adamw_8bit", [p.numel() for p in params]) == total


def _input(**kw) -> PlanInput:
    base = dict(backend="hf", device="cuda", dtype="bfloat16", batch_size=2, seq_len=2048, lora_r=16,
                target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                lora_dropout=0.0, optimizer="adamw_8bit", gradient_checkpointing=True)
    return PlanInput(**{**base, **kw})


def _llama_8b() -> str:
    return json.dumps({"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                       "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                       "max_position_embeddings": 131072, "tie_word_embeddings": False})


def test_memory_grows_with_tokens_and_checkpointing_saves_it():
    shape = shape_from_config(json.loads(_llama_8b()))
    p = _input()
    assert estimate(shape, replace(p, seq_len=4096)).peak > estimate(shape, p).peak
    assert estimate(shape, replace(p, gradient_checkpointing=False)).terms["activations"] > \
        4 * estimate(shape, p).terms["activations"]
    # hf upcasts embeddings and head to fp32 (prepare_model_for_kbit_training); Unsloth keeps them in bf16.
    assert estimate(shape, p).terms["weights_dense"] == 2 * estimate(shape, replace(p, backend="unsloth")).terms[
        "weights_dense"]


@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_largest_fitting_is_the_boundary(backend):
    shape = shape_from_config(json.loads(_llama_8b()))
    p, budget = _input(backend=backend), 16 * 2**30
    best = largest_fitting(shape, p, budget, "seq_len", 131072)

    def need(n):
        peak = estimate(shape, replace(p, seq_len=n)).peak
        return peak + runtime_bytes(peak, "cuda")

    assert best is not None and need(best) <= budget < need(best + 1)
    assert largest_fitting(shape, p, 2 * 2**30, "seq_len", 131072) is None  # the weights alone do not fit


def _local_recipe(tmp_path, model_type="llama"):
    config, _ = _meta_model(model_type)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(config.to_dict()))
    return write_recipe(tmp_path / "r.yaml", model={"name": str(model_dir), "max_seq_length": 256})


def test_plan_cli_json_is_consistent(tmp_path):
    recipe = _local_recipe(tmp_path)
    r = run_cli("plan", str(recipe), "--gpu", "rtx4090", "--json", "--seq-len", "128")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["budget_bytes"] == 24 * 2**30 and plan["fits"] is True
    assert plan["tensor_peak_bytes"] == sum(plan["terms"].values())
    assert plan["needed_bytes"] == plan["tensor_peak_bytes"] + plan["runtime_bytes"]
    assert plan["input"]["optimizer"] == "adamw_8bit" and plan["input"]["dtype"] == "bfloat16"
    # The model's context (max_position_embeddings) caps the longest sequence searched.
    assert plan["largest_seq_len"] == json.loads((tmp_path / "model" / "config.json").read_text())[
        "max_position_embeddings"]


def test_plan_cli_says_when_it_does_not_fit(tmp_path):
    recipe = _local_recipe(tmp_path)
    r = run_cli("plan", str(recipe), "--gpu-mem", "1", "--gpu", "t4", "--batch-size", "1024")
    assert r.returncode == 0, r.stderr
    assert "of 1.0 GiB (t4): does NOT fit" in r.stdout and "float16" in r.stdout  # a T4 has no bf16
    largest = r.stdout.splitlines()[-1]
    assert largest.startswith("largest seq_len at batch 1024: ") and int(largest.rsplit(": ", 1)[1]) < 1024


@pytest.mark.parametrize("args,message", [
    (["--gpu", "rtx9090"], "qlora-kit: error: --gpu: unknown GPU 'rtx9090'; known: h200, h100"),
    (["--device", "t4"], "qlora-kit: error: --device t4: auto, cpu or cuda; for a GPU by name use --gpu t4\n"),
    (["--device", "tpu"], "qlora-kit: error: --device: 'tpu' is not one of: auto, cpu, cuda\n"),
    (["--gpu", "t4", "--device", "cpu"], "qlora-kit: error: --gpu: t4 is a CUDA GPU, which does not go with device "
     "cpu; give one or the other\n"),
    (["--seq-len", "100000"], "qlora-kit: error: --seq-len: 100000 is above the model's context of"),
    (["--batch-size", "0"], "qlora-kit: error: --batch-size: 0 must be at least 1"),
    (["--gpu-mem", "lots"], "qlora-kit: error: --gpu-mem: 'lots' is not a size"),
    (["--gpu-mem", "100MB"], "qlora-kit: error: --gpu-mem: '100MB' is under 1 GiB, too little for a GPU; give its "
     "memory in GiB, e.g. 24 or 24GiB"),
])
def test_plan_cli_bad_input(tmp_path, args, message):
    r = run_cli("plan", str(_local_recipe(tmp_path)), *args)
    assert r.returncode == 2
    assert r.stderr.startswith(message), r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("size", ["24", "24G", "24GB", "24GiB", "24gib", "24576MiB"])
def test_gpu_mem_is_binary_whatever_the_spelling(tmp_path, size):
    # GPU makers' "24 GB" is 24 GiB; a bare number is GiB too (it was read as 24 bytes).
    r = run_cli("plan", str(_local_recipe(tmp_path)), "--gpu-mem", size, "--gpu", "t4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["budget_bytes"] == 24 * 2**30


def test_plan_cli_cuda_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = run_cli("plan", str(_local_recipe(tmp_path)), "--device", "cuda")
    assert r.returncode == 2
    assert r.stderr.strip() == ("qlora-kit: error: --device: cuda was asked for but no CUDA GPU is visible; name a "
                                "GPU (e.g. --gpu rtx4090) or give --gpu-mem SIZE")


def test_unknown_layout_is_one_line(tmp_path):
    config = {"model_type": "mamba", "vocab_size": 10, "hidden_size": 8}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": str(tmp_path / "m")})
    r = run_cli("plan", str(recipe), "--device", "cpu")
    assert r.returncode == 2
    assert r.stderr.startswith("qlora-kit: error: plan: model_type 'mamba' has no known layer layout; known: llama")


def test_known_gpu_names():
    from qlora_kit.planner.gpus import find_gpu

    assert find_gpu("NVIDIA H100 80GB HBM3").name == "h100"
    assert find_gpu("NVIDIA A100-SXM4-80GB").name == "a100-80gb"
    assert find_gpu("NVIDIA A100-SXM4-40GB").name == "a100"
    assert find_gpu("NVIDIA GeForce RTX 4090").name == "rtx4090"
    assert find_gpu("NVIDIA L40S").name == "l40s" and find_gpu("NVIDIA L4").name == "l4"
    assert find_gpu("Some Unknown Accelerator") is None
    assert math.isclose(find_gpu("h100").peak_flops, 989e12)


def test_plan_hub_model_offline_is_one_line(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": "example-org/no-such-model"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # CI has no Hub either; this makes the failure immediate
    r = run_cli("plan", str(recipe), "--gpu", "rtx4090")
    assert r.returncode == 2
    assert r.stderr.startswith("qlora-kit: error: model.name: could not fetch config.json of "
                               "example-org/no-such-model from the Hub (")
    assert r.stderr.rstrip().endswith("point model.name at a local model directory")
    assert len(r.stderr.strip().splitlines()) == 1


# Preference tuning (issue #26): what train.method adds to SFT's prediction, for the same recipe.

def _methods(**kw) -> dict:
    shape = shape_from_config(json.loads(_llama_8b()))
    return {m: estimate(shape, _input(method=m, **kw)) for m in ("sft", "dpo", "orpo", "simpo", "kto")}


def test_dpo_counts_two_sequences_per_row_and_the_reference_forward():
    """Llama 3.1 8B, hf on a GPU, batch 2 x 2048, checkpointing on (the GPU defaults)."""
    est = _methods()
    sft, dpo = est["sft"].terms, est["dpo"].terms
    for term in ("weights_4bit", "weights_dense", "lora", "optimizer"):
        assert dpo[term] == sft[term]  # one model: the reference is the same weights with the adapter disabled
    # Chosen and rejected run in one batch: exactly twice SFT's saved activations; orpo and simpo alike.
    assert dpo["activations"] == 2 * sft["activations"]
    assert est["orpo"].terms["activations"] == est["simpo"].terms["activations"] == dpo["activations"]
    # KTO keeps one sequence per row (its KL sequence and the reference forwards run without gradients).
    assert est["kto"].terms["activations"] == sft["activations"]
    # With checkpointing, the reference's no_grad forward (one layer at a time, no activations) needs less than
    # backward does: counted, and adds nothing.
    assert dpo["reference_forward"] == 0 and "reference_forward" not in sft
    assert dpo["logits_and_loss"] / sft["logits_and_loss"] == pytest.approx(1.0625)  # one tile + the scored rows
    assert est["dpo"].peak / est["sft"].peak == pytest.approx(1.2515, abs=1e-4)  # 12.99 GiB against 10.38
    # ORPO and SimPO build the full logits of both sequences (8192 x 128256): they, not activations, dominate.
    assert est["orpo"].peak / est["sft"].peak == pytest.approx(2.5714, abs=1e-4)


def test_dpo_without_checkpointing_and_with_precomputed_reference():
    no_ckpt = _methods(gradient_checkpointing=False)
    assert no_ckpt["dpo"].peak / no_ckpt["sft"].peak == pytest.approx(1.7197, abs=1e-4)  # 51.8 GiB against 30.1
    unsloth = _methods(backend="unsloth", gradient_checkpointing=False)["dpo"].terms
    # Unsloth's log-prob kernel is small, so here the reference forward's MLP (4 x hidden + 3 x intermediate a
    # token, in bf16, for 8192 tokens) is what peaks on top of the saved activations, beyond the loss's peak.
    assert unsloth["gradients_and_backward"] == 0
    assert unsloth["reference_forward"] == 8192 * 2 * (4 * 4096 + 3 * 14336) - unsloth["logits_and_loss"]
    shape = shape_from_config(json.loads(_llama_8b()))
    pre = estimate(shape, _input(backend="unsloth", gradient_checkpointing=False, method="dpo", precompute_ref=True))
    assert "reference_forward" not in pre.terms
    assert pre.peak == sum(unsloth.values()) - unsloth["reference_forward"]


def test_dpo_scores_only_the_answers():
    """TRL's fused LM head projects only labelled positions: the bench gives its rows' share of answer tokens;
    `plan` counts every token (scored_share 1.0, the upper bound)."""
    shape = shape_from_config(json.loads(_llama_8b()))
    cpu = dict(device="cpu", dtype="float32", method="dpo", gradient_checkpointing=False, seq_len=256)
    full, answers = (estimate(shape, _input(**cpu, scored_share=s)).terms["logits_and_loss"] for s in (1.0, 0.5))
    # hf on CPU: runtime/logprobs.py's tiles of 8 Mi logits (65 tokens of a 128k vocabulary) at 22 bytes a logit,
    # plus the scored rows' hidden states (2 x 256 x 2 = 1024 of them, then half).
    tile = 8 * 2**20 // 128256
    assert tile == 65
    assert full == tile * 128256 * 22 + 1024 * 4096 * 4
    assert answers == tile * 128256 * 22 + 512 * 4096 * 4


@pytest.fixture
def llama_8b_recipe(tmp_path):
    model_dir = tmp_path / "llama-8b"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(_llama_8b())
    return write_recipe(tmp_path / "dpo.yaml", model={"name": str(model_dir), "max_seq_length": 4096},
                        data={"path": "builtin:tiny-chat"}, train={"method": "dpo"})


def test_plan_says_a_recipe_that_fits_for_sft_does_not_fit_for_dpo(llama_8b_recipe):
    args = ("plan", str(llama_8b_recipe), "--gpu", "rtx4090", "--batch-size", "4", "--backend", "hf")
    sft = json.loads(run_cli(*args, "--set", "train.method=sft", "--json").stdout)
    dpo = json.loads(run_cli(*args, "--json").stdout)
    assert (sft["fits"], dpo["fits"]) == (True, False)
    assert (sft["method"], sft["sequences_per_row"], dpo["method"], dpo["sequences_per_row"]) == ("sft", 1, "dpo", 2)
    assert dpo["reference_forward"] is True and dpo["terms"]["reference_forward"] == 0
    assert round(sft["needed_bytes"] / 2**30, 1) == 20.3 and round(dpo["needed_bytes"] / 2**30, 1) == 31.5
    # The largest batch that fits at 4096 tokens: half of SFT's, as each row is two sequences.
    assert (sft["largest_batch_size"], dpo["largest_batch_size"]) == (5, 2)
    text = run_cli(*args).stdout
    assert "\nmethod dpo: 2 sequences per row (chosen and rejected, each prompt + answer) keep activations; the " \
           "reference forward (adapter disabled, no_grad) adds one layer's working set" in text
    assert "of 24.0 GiB (rtx4090): does NOT fit" in text
    pre = run_cli(*args, "--set", "preference.precompute_ref_log_probs=true", "--json")
    assert json.loads(pre.stdout)["reference_forward"] is False, pre.stderr


# GRPO (train.method grpo): a step runs its phases one after the other (sampling, the no_grad scoring forwards,
# training) and peaks in the largest, on top of the held terms.

GRADER = {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
          "operation": "eq"}
HELD = ("weights_4bit", "weights_dense", "lora", "optimizer")


def _grpo(seq_len=2048, batch="auto", grad_accum=1, device="cuda", **grpo):
    from qlora_kit.planner.inputs import plan_input_for
    from qlora_kit.recipe import load_recipe

    recipe = load_recipe({"model": {"name": "builtin:tiny-llama", "max_seq_length": seq_len},
                          "data": {"path": "builtin:tiny-chat"},
                          "train": {"method": "grpo", "batch_size": batch, "grad_accum": grad_accum},
                          "grpo": {"graders": [GRADER], **grpo}})
    shape = shape_from_config(json.loads(_llama_8b()))
    p = plan_input_for(recipe, shape, "hf", device, seq_len)
    return shape, p, estimate(shape, p)


def test_grpo_counts_the_kv_cache_of_a_generation_round_and_the_training_step():
    """Llama 3.1 8B, hf on a GPU (bf16, checkpointing on): 4 completions of 512 prompt + 256 completion tokens."""
    shape, p, est = _grpo(seq_len=768, max_completion_length=256)
    assert (p.batch_size, p.completion_len, p.steps_per_generation) == (4, 256, 1)  # auto batch: one group
    assert est.peak == sum(est.terms[t] for t in HELD) + max(est.phases.values())
    assert est.peak == sum(est.terms.values()) and est.phases["training"] > est.phases["generation"]
    # Sampling peaks in the larger of the prefill (the prompts' KV cache, 2 x 32 layers x 8 kv heads x 128 in bf16
    # a token, one layer's keys being copied, and one layer's MLP working set over the 4 x 512 prompt tokens with
    # LoRA's output beside the projection's) and the last decoding step (the cache of 4 x 768 tokens, the last
    # position's logits at 2 + 12 bytes each), plus one dequantized 4-bit weight (the largest, an MLP projection).
    kv_token = 2 * 32 * 8 * 128 * 2 + 8 * 128 * 2
    prefill = 4 * 512 * kv_token + 4 * 512 * 2 * (4 * 4096 + 3 * 14336 + 14336)
    last_step = 4 * 768 * kv_token + 4 * 128256 * 14
    assert est.phases["generation"] == max(prefill, last_step) + 14336 * 4096 * 2 and prefill > last_step
    # Training: SFT's activations for 4 x 768 tokens; the fused LM head scores the 4 x 256 completion tokens.
    sft = estimate(shape, replace(p, method="sft"))
    assert est.terms["activations"] == sft.terms["activations"]
    assert est.terms["logits_and_loss"] == 4 * 256 * 4096 * 2 + 1024 * 32768 * 8  # their hidden rows + one tile


def test_grpo_memory_grows_with_the_group_and_the_completion_length():
    base = _grpo(seq_len=320, max_completion_length=256)[2]
    group = _grpo(seq_len=320, max_completion_length=256, num_generations=8)[2]  # auto batch: 8 completions
    longer = _grpo(seq_len=576, max_completion_length=512)[2]  # the same 64-token prompts, longer completions
    for bigger in (group, longer):
        assert bigger.peak > base.peak
        assert bigger.phases["generation"] > base.phases["generation"]
        assert bigger.phases["training"] > base.phases["training"]
    assert group.terms["activations"] == 2 * base.terms["activations"]
    # steps_per_generation 4 samples the completions of 4 micro-steps in one call (4x the cache and the prefill),
    # and TRL then scores the old policy's log-probs (the round outlives an optimizer step of grad_accum 1).
    shape, p, round4 = _grpo(seq_len=320, max_completion_length=256, steps_per_generation=4)
    dequantized = 14336 * 4096 * 2  # one 4-bit MLP weight, whatever the batch
    assert p.old_logprobs and round4.phases["generation"] - dequantized == 4 * (base.phases["generation"] - dequantized)
    assert round4.phases["training"] == base.phases["training"]


def test_grpo_reference_and_old_policy_forwards():
    from qlora_kit.planner.methods import reference_bytes

    _, _, base = _grpo(max_completion_length=512)
    shape, p, kl = _grpo(max_completion_length=512, beta=0.04)
    assert "reference_forward" not in base.terms and "reference_forward" not in base.phases
    # TRL 1.15 keeps a frozen copy of the adapter ("ref") as the reference: held all along, the LoRA weights' size.
    assert kl.terms["reference_adapter"] == kl.terms["lora"] and "reference_adapter" not in base.terms
    # The reference scores batch_size sequences at a time without gradients (its adapter active), in the generation
    # round: before the training forward, not on top of its activations, so with checkpointing it adds nothing.
    assert kl.phases["reference_forward"] == reference_bytes(shape, p, 2, 4 * 2048, 4 * 512, adapter=True)
    assert kl.terms["reference_forward"] == 0 and kl.peak == base.peak + kl.terms["reference_adapter"]
    # Without checkpointing it still stays under training's peak, which holds the saved activations.
    _, _, flat = _grpo(max_completion_length=512, beta=0.04, device="cpu")
    assert 0 < flat.phases["reference_forward"] < flat.phases["training"]
    # num_iterations > 1 reuses a round's completions: TRL scores the old policy's log-probs once more ...
    iterated = _grpo(max_completion_length=512, num_iterations=2)[2]
    assert iterated.phases["old_logprob_forward"] == kl.phases["reference_forward"]
    assert "old_logprob_forward" in iterated.terms and "old_logprob_forward" not in base.terms
    # ... unless the round ends with an optimizer step (TRL: grad_accum a multiple of steps x iterations).
    assert not _grpo(grad_accum=2, batch=4, steps_per_generation=1, num_iterations=2)[1].old_logprobs
    assert _grpo(grad_accum=2, batch=4, num_iterations=2)[1].old_logprobs  # a round of 2 steps, twice: 4 > 2


def test_grpo_generation_peaks_for_long_prompts_and_large_rounds():
    """Sampling 64 completions of 3,968-token prompts at once: the KV cache outgrows a 4-sequence training step."""
    _, p, est = _grpo(seq_len=4096, batch=4, max_completion_length=128, steps_per_generation=16)
    assert est.phases["generation"] > est.phases["training"]
    assert est.terms["generation"] == est.phases["generation"] - est.phases["training"]
    assert est.peak == sum(est.terms[t] for t in HELD) + est.phases["generation"]


def test_plan_cli_grpo(tmp_path, capsys):
    from conftest import run_cli_here

    recipe = write_recipe(tmp_path / "r.yaml", model={"max_seq_length": 256},
                          train={"method": "grpo", "batch_size": 4},
                          grpo={"graders": [GRADER], "max_completion_length": 64, "beta": 0.04})
    r = run_cli_here(capsys, "plan", str(recipe), "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["method"] == "grpo" and plan["reference_forward"] is True
    assert set(plan["phases"]) == {"training", "generation", "reference_forward"}
    assert plan["tensor_peak_bytes"] == sum(plan["terms"].values())
    assert plan["counted"].startswith("grpo: phases one after the other, the step peaks in the largest (training ")
    assert "sampling 4 completions in one generate call (KV cache of 192 prompt + 64 completion tokens" in \
        plan["counted"]
    r = run_cli_here(capsys, "plan", str(recipe), "--device", "cpu", "--seq-len", "64")
    assert r.returncode == 2 and r.stderr.strip() == (
        "qlora-kit: error: plan: a grpo sequence is prompt + completion, but the sequence length 64 leaves no room "
        "for a prompt beside grpo.max_completion_length 64; raise model.max_seq_length (or --seq-len) or lower "
        "grpo.max_completion_length")
