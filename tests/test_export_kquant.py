"""K-quant (and Q4_0) files written in row blocks by ggml's quantizer with llama.cpp's per-tensor type policy hold,
tensor for tensor, the bytes llama.cpp's own `llama_model_quantize` writes from a full-precision GGUF of the model."""

from __future__ import annotations

import ctypes

import pytest
import torch

from test_export import make_model

pytestmark = pytest.mark.slow

MIXTURES = ("q4_0", "q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k")


def llama_cpp_quantize(src, dst, file_type: int) -> None:
    """The reference: llama.cpp's quantizer, on every core, as qlora-kit used it before (a file in, a file out)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = 0
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0


# Each model reaches other branches of the policy:
# - llama: 12 layers, so layers 10 and 11 come between 1 and 2 in llama.cpp's visiting order only if it sorted by
#   name (it sorts by layer number); one KV head (GQA 4: Q2_K's attn_v becomes Q4_K); bf16, with the MLP 328 wide,
#   so ffn_down rows fit no K-quant block nor a 32-value one and fall back to F16 (bf16 -> f16 through ggml);
# - phi3: fused attn_qkv (counted as attn_v), MLP 320 wide: ffn_down falls back to Q4_0/Q5_0/Q5_1/Q8_0;
# - gemma2: tied embeddings (the token embedding gets the output matrix's type), +1 norm shift;
# - qwen2: q/k/v biases (1-D, never quantized).
MODELS = {"llama": dict(layers=12, intermediate=328, num_key_value_heads=1, dtype=torch.bfloat16),
          "phi3": dict(intermediate=320), "gemma2": {}, "qwen2": {}}


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_tensor_matches_llama_cpp_quantizer(tiny_model_dir, tmp_path, kind):
    from gguf import GGUFReader

    from qlora_kit.gguf.run import _base_type
    from qlora_kit.gguf.tensors.convert import write_gguf
    from qlora_kit.gguf.tensors.quants import QUANT_TYPES

    settings = dict(MODELS[kind])
    dtype = settings.pop("dtype", torch.float32)
    model = make_model(tmp_path, tiny_model_dir, kind, **settings)
    if dtype != torch.float32:
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(model, dtype=dtype).save_pretrained(model)
    import json

    base = _base_type(json.loads((model / "config.json").read_text()))
    assert base.name == ("bf16" if dtype == torch.bfloat16 else "f32")
    write_gguf(model, tmp_path / "base.gguf", base.ggml, base.file_type, "m")
    seen = set()
    for quant in MIXTURES:
        q = QUANT_TYPES[quant]
        llama_cpp_quantize(tmp_path / "base.gguf", tmp_path / f"ref-{quant}.gguf", q.file_type)
        # 4 KiB blocks: every matrix is encoded in many row blocks, split again across threads.
        write_gguf(model, tmp_path / f"ours-{quant}.gguf", base.ggml, q.file_type, "m", block_bytes=4096,
                   mixture=quant)
        ref = {t.name: t for t in GGUFReader(str(tmp_path / f"ref-{quant}.gguf")).tensors}
        ours = {t.name: t for t in GGUFReader(str(tmp_path / f"ours-{quant}.gguf")).tensors}
        assert sorted(ours) == sorted(ref)
        for name, t in ref.items():
            assert ours[name].tensor_type == t.tensor_type, (quant, name)
            assert ours[name].data.tobytes() == t.data.tobytes(), (quant, name)
            seen.add(t.tensor_type.name)
        assert int(GGUFReader(str(tmp_path / f"ours-{quant}.gguf")).get_field("general.file_type").contents()) \
            == q.file_type
    expected = {"llama": {"F16", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0"},
                "phi3": {"Q4_0", "Q5_0", "Q5_1", "Q8_0"}, "gemma2": {"Q6_K", "Q4_K"}, "qwen2": {"Q6_K"}}[kind]
    assert expected <= seen, seen


def test_the_type_policy_counts_layers_in_llama_cpp_order():
    """Q4_K_M gives attn_v and ffn_down Q6_K in the first and last eighth of the layers and every third between;
    with 12 layers: layer 0 (< 12/8), 10 and 11 (>= 7*12/8), and 3, 6, 9 (llama.cpp's use_more_bits)."""
    from qlora_kit.gguf.tensors.quant_policy import llama_cpp_order, tensor_types

    names = {f"blk.{i}.{part}.weight": (256, 256) for i in range(12) for part in ("attn_v", "ffn_down", "attn_q")}
    names.update({"token_embd.weight": (1000, 256), "output.weight": (1000, 256), "output_norm.weight": (256,)})
    assert llama_cpp_order(["blk.10.a", "blk.2.a", "output.weight", "blk.1.b", "blk.1.a"]) == \
        ["output.weight", "blk.1.a", "blk.1.b", "blk.2.a", "blk.10.a"]
    config = {"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 12}
    types = tensor_types(names, "q4_k_m", "llama", config)
    six = sorted(int(n.split(".")[1]) for n, t in types.items() if t == "Q6_K" and "attn_v" in n)
    assert six == [0, 3, 6, 9, 10, 11]
    assert six == sorted(int(n.split(".")[1]) for n, t in types.items() if t == "Q6_K" and "ffn_down" in n)
    assert {types[f"blk.{i}.attn_q.weight"] for i in range(12)} == {"Q4_K"}
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
    assert "output_norm.weight" not in types  # 1-D: kept as converted


def test_nan_weights_are_refused_naming_the_tensor(tiny_model_dir, tmp_path):
    """llama.cpp checks the rows it quantizes (its loader's check_tensors); a NaN weight is refused with the
    tensor's name and nothing is left looking complete."""
    from safetensors.torch import load_file, save_file

    from conftest import run_cli

    model = make_model(tmp_path, tiny_model_dir, "qwen2")
    weights = load_file(model / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 7] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    result = run_cli("export", str(model), "--quant", "q4_k_m", "--no-verify", "--out", str(tmp_path / "gguf"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "qlora-kit: error: blk.1.ffn_up.weight: the weights hold NaN or infinite values; the model is broken: re-merge or "
        "re-train it")
    assert not list((tmp_path / "gguf").glob("*.gguf*"))
