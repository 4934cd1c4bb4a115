"""Merging: NF4 round-trip exactness, the streaming writer, parity with the trained adapter, loadability without
qlora-kit, LoRA variants, a memory bound that does not grow with model size, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_cli, write_recipe
from qlora_kit.merging.writer import PlannedTensor, ShardWriter, plan_shards, write_index


def test_nf4_roundtrip_is_bit_identical_to_the_loaded_4bit_model(tiny_model_dir):
    from bitsandbytes.functional import dequantize_4bit
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from qlora_kit.merging.checkpoint import nf4_roundtrip

    for dtype in (torch.float32, torch.bfloat16):
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant, dtype=dtype,
                                                     device_map={"": "cpu"})
        with safe_open(tiny_model_dir / "model.safetensors", "pt") as fh:
            for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
                layer = model.get_submodule(name)
                loaded = dequantize_4bit(layer.weight.data, layer.weight.quant_state)
                assert torch.equal(nf4_roundtrip(fh.get_tensor(f"{name}.weight"), dtype), loaded), (name, dtype)


def test_streaming_writer_round_trips_through_safetensors(tmp_path):
    tensors = {"a": torch.randn(300, 7), "b": torch.randn(50).to(torch.bfloat16),
               "c": torch.arange(12, dtype=torch.int64).reshape(3, 4), "d": torch.randn(1000).half()}
    planned = [PlannedTensor(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    shards = plan_shards(planned, max_shard_bytes=1500)  # a | b+c | d
    assert len(shards) == 3 and [t.name for t in shards[0].tensors] == ["a"]  # 8400 bytes: a shard of its own
    for shard in shards:
        writer = ShardWriter(tmp_path, shard)
        for t in shard.tensors:
            writer.write(t.name, tensors[t.name])
        writer.close()
    write_index(tmp_path, shards)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    loaded = {}
    for file in set(index["weight_map"].values()):
        loaded.update(load_file(tmp_path / file))
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name
    (tmp_path / "x").mkdir()
    writer = ShardWriter(tmp_path / "x", shards[0])
    with pytest.raises(ValueError, match="does not match the plan"):
        writer.write("a", tensors["a"].double())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    recipe = write_recipe(root / "base.yaml", data={"eval_split": 0.1}, train={"max_steps": 40, "logging_steps": 10})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "runs" / "base"


@pytest.mark.slow
def test_dequantized_fp32_merge_matches_the_trained_adapter(trained_run):
    result = run_cli("merge", str(trained_run), "--dtype", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    merged = trained_run / "merged"
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["base"] == "dequantized" and report["nf4_roundtripped"] == 14 and report["lora_merged"] == 14
    fid = report["fidelity"]
    assert fid["samples_from"] == "eval split" and fid["samples"] == 7
    deq, orig = fid["dequantized"], fid["original"]
    assert deq["max_abs_logit_diff"] <= 1e-3
    assert deq["top1_agreement"] == 1.0 and deq["mean_kl"] < 1e-8
    assert deq["loss_candidate"] == pytest.approx(deq["loss_reference"], abs=1e-5)
    # The other base is reported too, and is measurably further from what was trained.
    assert orig["max_abs_logit_diff"] > 100 * deq["max_abs_logit_diff"]
    # The reference is the trained model: its held-out loss is the run's final eval loss.
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert deq["loss_reference"] == pytest.approx(metrics["eval_loss"], abs=2e-3)
    assert not list(trained_run.glob(".merged*")), "no temporary directory left behind"


@pytest.mark.slow
def test_merged_model_loads_with_plain_transformers_and_no_qlora_kit(trained_run, tmp_path):
    if not (trained_run / "merged").exists():
        assert run_cli("merge", str(trained_run), "--dtype", "fp32").returncode == 0
    merged = trained_run / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (merged / "generation_config.json").is_file() and (merged / "chat_template.jinja").is_file()
    code = (
        "import sys, importlib.util\n"
        # Drop the editable install's import hook: the merged model must load with qlora_kit absent.
        "sys.meta_path = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
        "assert importlib.util.find_spec('qlora_kit') is None, 'qlora_kit must not be importable here'\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(merged)!r})\n"
        f"tok = AutoTokenizer.from_pretrained({str(merged)!r})\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'What is the capital of Peru?'}],"
        " add_generation_prompt=True, return_tensors='pt', return_dict=True)['input_ids']\n"
        "out = model.generate(ids, max_new_tokens=8, do_sample=False)\n"
        "assert out.shape[1] > ids.shape[1]\n"
        "assert 'unsloth' not in sys.modules and 'peft' not in sys.modules\n"
        "print(type(model.model.layers[0].self_attn.q_proj).__name__)\n"
    )
    # -I: isolated mode, so neither the checkout nor the editable install's path hook can provide qlora_kit.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "Linear"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["unsloth", "hf"])
def test_variants_rslora_subset_targets_and_full_embeddings_merge_exactly(tmp_path, backend):
    recipe = write_recipe(tmp_path / "v.yaml", model={"backend": backend}, data={"eval_split": 0.1},
                          lora={"rslora": True, "dropout": 0.05, "target_modules": ["q_proj", "v_proj", "embed_tokens",
                                                                                    "lm_head"]},
                          train={"max_steps": 20, "logging_steps": 10},
                          merge={"enabled": True, "dtype": "fp32", "samples": 4})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "v" / "merged" / "merge_report.json").read_text())
    # q/v carry LoRA; every other projection was still 4-bit in training and must get the NF4 round trip too.
    assert report["lora_merged"] == 4 and report["replaced"] == 2 and report["nf4_roundtripped"] == 14
    assert report["scale"] == pytest.approx(32 / 4)  # rsLoRA: alpha / sqrt(r)
    assert report["fidelity"]["dequantized"]["max_abs_logit_diff"] <= 1e-3
    stages = [(e["name"], e["status"]) for e in map(json.loads, (tmp_path / "runs" / "v" / "events.jsonl").open())
              if e["event"] == "stage"]
    assert stages[-2:] == [("merge", "start"), ("merge", "end")]


def _fake_run(root, model_dir, adapter_dir, status="complete"):
    """A run directory around an existing model and adapter (for merge-only tests)."""
    run = root / "run"
    (run / "adapter").mkdir(parents=True)
    for f in adapter_dir.iterdir():
        shutil.copy2(f, run / "adapter" / f.name)
    recipe = write_recipe(root / "r.yaml", model={"name": str(model_dir), "dtype": "float32"})
    shutil.copy2(recipe, run / "recipe.yaml")
    (run / "run.json").write_text(json.dumps({"status": status, "base_model": str(model_dir)}))
    return run


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A ~108M-parameter random Llama (~430 MB in fp32) and a random LoRA adapter on all its linear layers."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=1024, intermediate_size=2816, num_hidden_layers=9,
                         num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "model")
    shutil.copy2(ROOT / "qlora_kit" / "assets" / "tiny_chat.jsonl", root / "data.jsonl")
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.01)
    peft_model.save_pretrained(root / "adapter")
    return root


MEASURE = """
import sys
import torch, transformers, bitsandbytes, safetensors  # the fixed cost every merge pays
from qlora_kit.cli import main
from qlora_kit.runtime.memory import peak_rss_bytes
code = main(sys.argv[1:]) if len(sys.argv) > 1 else 0
print("PEAK", peak_rss_bytes())
sys.exit(code)
"""


@pytest.mark.slow
def test_streaming_merge_memory_does_not_grow_with_model_size(wide_model, trained_run, tiny_model_dir, tmp_path):
    """Merging a 409 MiB model must cost about the same peak memory as merging a 6 MiB one (same code path, same
    imports): only the largest tensor (11 MiB here) should add to it, never the model."""
    run = _fake_run(tmp_path, wide_model / "model", wide_model / "adapter")
    model_bytes = sum(f.stat().st_size for f in (wide_model / "model").glob("*.safetensors"))
    tiny_bytes = (tiny_model_dir / "model.safetensors").stat().st_size

    def peak(*args):
        result = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        return int(result.stdout.split("PEAK")[-1])

    small = peak("merge", str(trained_run), "--no-verify", "--out", str(tmp_path / "tiny-merged"))
    large = peak("merge", str(run), "--no-verify", "--max-shard-size", "100MB")
    print(f"merge peak RSS: {small / 2**20:.0f} MiB (tiny model), {large / 2**20:.0f} MiB "
          f"({model_bytes / 2**20:.0f} MiB model)")
    bound = 64 * 2**20
    assert model_bytes - tiny_bytes > 5 * bound
    assert large - small < bound, (large - small) / 2**20
    merged = run / "merged"
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 4
    assert sum(f.stat().st_size for f in merged.glob("*.safetensors")) >= model_bytes


@pytest.mark.slow
def test_adapter_from_a_different_base_is_refused(wide_model, trained_run, tmp_path):
    run = _fake_run(tmp_path, wide_model / "model", trained_run / "adapter")
    result = run_cli("merge", str(run))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"qlora-kit: error: {run / 'adapter'}: the adapter does not fit this base model (was it trained on another "
        "one?): model.layers.0.mlp.down_proj.weight has shape (1024, 2816) in the base but the adapter expects "
        "(256, 512)")
    assert not (run / "merged").exists()


def test_missing_adapter_files_unfinished_runs_and_bad_options(tiny_model_dir, tmp_path):
    (tmp_path / "empty-adapter").mkdir()
    run = _fake_run(tmp_path, tiny_model_dir, tmp_path / "empty-adapter")
    result = run_cli("merge", str(run))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"qlora-kit: error: {run / 'adapter'}: missing adapter file(s) "
                                     "adapter_config.json, adapter_model.safetensors")
    (run / "run.json").write_text(json.dumps({"status": "interrupted"}))
    result = run_cli("merge", str(run))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"qlora-kit: error: {run}: the run never finished (status: interrupted); merge "
                                     "needs a complete run; continue it with `qlora-kit train RECIPE --resume`")
    result = run_cli("merge", str(run), "--max-shard-size", "lots")
    assert result.returncode == 2
    assert "--max-shard-size: 'lots' is not a size; use e.g. 500MB, 2GB or 1GiB" in result.stderr
    result = run_cli("merge", str(tmp_path / "nope"))
    assert result.returncode == 2 and f"{tmp_path / 'nope'}: no such run directory" in result.stderr


@pytest.mark.slow
def test_unwritable_output_and_existing_output(trained_run, tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_cli("merge", str(trained_run), "--out", str(tmp_path / "file" / "merged"), "--no-verify")
    assert result.returncode == 2 and "--out: cannot write" in result.stderr
    out = tmp_path / "out"
    assert run_cli("merge", str(trained_run), "--out", str(out), "--no-verify").returncode == 0
    result = run_cli("merge", str(trained_run), "--out", str(out), "--no-verify")
    assert result.returncode == 2 and f"{out} already exists; pass --overwrite to replace it" in result.stderr


@pytest.mark.slow
def test_not_enough_disk_leaves_nothing_behind(trained_run, monkeypatch):
    """The disk-space check runs before any tensor is written; the free-space query is the only thing faked."""
    from qlora_kit.errors import StageError
    from qlora_kit.merging import merge as merge_module
    from qlora_kit.recipe.options import MergeOptions
    from qlora_kit.merging.run import merge_run

    real = shutil.disk_usage
    monkeypatch.setattr(merge_module.shutil, "disk_usage", lambda p: real(p)._replace(free=1_000_000))
    with pytest.raises(StageError, match=r"not enough disk space at .*: the merged model needs 0\.01 GiB, 0\.00 GiB "
                                         r"free; free some space or pass --out DIR on another disk"):
        merge_run(trained_run, MergeOptions(verify=False), out=trained_run / "merged-small")
    assert not (trained_run / "merged-small").exists()
    assert not list(trained_run.glob(".merged-small*"))


@pytest.mark.slow
def test_prequantized_checkpoint_merges_like_the_original(trained_run, tiny_model_dir, tmp_path):
    """A bitsandbytes 4-bit checkpoint (as '-bnb-4bit' repos ship) dequantizes to the same weights."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant, dtype=torch.float32,
                                                 device_map={"": "cpu"})
    model.save_pretrained(tmp_path / "bnb4")
    run = _fake_run(tmp_path, tmp_path / "bnb4", trained_run / "adapter")
    result = run_cli("merge", str(run), "--base", "original")
    assert result.returncode == 2 and "pre-quantized 4-bit checkpoint" in result.stderr
    result = run_cli("merge", str(run), "--dtype", "fp32", "--no-verify")
    assert result.returncode == 0, result.stderr[-3000:]
    if not (trained_run / "merged").exists():
        assert run_cli("merge", str(trained_run), "--dtype", "fp32", "--no-verify").returncode == 0
    ours = load_file(run / "merged" / "model.safetensors")
    reference = load_file(trained_run / "merged" / "model.safetensors")
    assert ours.keys() == reference.keys()
    for name in reference:
        assert torch.allclose(ours[name], reference[name], atol=1e-6), name


@pytest.mark.slow
def test_tied_embeddings_stay_tied(tiny_model_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tied")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "tied")
    assert "lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    recipe = write_recipe(tmp_path / "t.yaml", model={"name": str(tmp_path / "tied")}, data={"eval_split": 0.1},
                          train={"max_steps": 20, "logging_steps": 10},
                          merge={"enabled": True, "dtype": "fp32", "samples": 4})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    merged = tmp_path / "runs" / "t" / "merged"
    assert "lm_head.weight" not in load_file(merged / "model.safetensors")
    assert json.loads((merged / "config.json").read_text())["tie_word_embeddings"] is True
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["fidelity"]["dequantized"]["max_abs_logit_diff"] <= 1e-3
