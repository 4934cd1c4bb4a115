"""Export with memory that does not grow with the model: row-block conversion is byte-identical to whole-tensor
conversion, the streamed HF reference gives a whole-model forward's logits, a large embedding does not raise the
conversion's peak, and an export that cannot fit in memory or on disk is refused before anything is written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from test_export import TOKENIZER_FILES, make_model

pytestmark = pytest.mark.slow

WHOLE = 1 << 40  # a block budget larger than any tensor here: every tensor is encoded in one piece


def _whole_tensor_bytes(ckpt, name: str, kind: str, arch, heads: int) -> bytes:
    """What the converter wrote before row blocks: the whole tensor in float32, transformed, encoded at once."""
    from qlora_kit.gguf.tensors.archs import permute_for_llama_cpp
    from qlora_kit.gguf.tensors.convert import _encode

    data = ckpt.get(name).float().numpy()
    if arch.permute_qk and ".q_proj." in name:
        data = permute_for_llama_cpp(data, heads)
    if arch.norm_shift and name.endswith("norm.weight"):
        data = data + arch.norm_shift
    return _encode(data, kind).tobytes()


@pytest.mark.parametrize("kind, dtype", [("llama", torch.bfloat16), ("gemma2", torch.float32)])
def test_row_blocks_write_the_same_bytes_as_whole_tensors(tiny_model_dir, tmp_path, kind, dtype):
    """Llama (Q/K un-permute, whole heads per block) from bf16, Gemma 2 (norm shift, tied head) from fp32: every
    type (F32, F16, BF16, Q8_0; the K-quant intermediate is one of the first three) gives the same file with 4 KiB
    blocks (dozens of blocks per matrix) as with one block per tensor, and that is the old whole-tensor encoding."""
    from gguf import GGUFReader

    from qlora_kit.gguf.tensors.archs import ARCHS
    from qlora_kit.gguf.tensors.convert import write_gguf
    from qlora_kit.merging.checkpoint import Checkpoint

    model = make_model(tmp_path, tiny_model_dir, kind)
    if dtype != torch.float32:
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(model, dtype=dtype).save_pretrained(model)
    ckpt = Checkpoint(model)
    arch = ARCHS[ckpt.config["architectures"][0]]
    for ggml in ("F32", "F16", "BF16", "Q8_0"):
        whole, blocks = tmp_path / f"{ggml}-whole.gguf", tmp_path / f"{ggml}-blocks.gguf"
        write_gguf(model, whole, ggml, 0, "m", block_bytes=WHOLE)
        write_gguf(model, blocks, ggml, 0, "m", block_bytes=4096)
        assert whole.read_bytes() == blocks.read_bytes(), ggml
        tensors = {t.name: t for t in GGUFReader(str(blocks)).tensors}
        for hf_name, gguf_name in (("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
                                   ("model.embed_tokens.weight", "token_embd.weight"),
                                   ("model.layers.1.input_layernorm.weight", "blk.1.attn_norm.weight")):
            written = tensors[gguf_name]
            expected = _whole_tensor_bytes(ckpt, hf_name, written.tensor_type.name, arch,
                                           ckpt.config["num_attention_heads"])
            assert written.data.tobytes() == expected, (ggml, gguf_name)


def test_row_blocks_hold_whole_heads_and_whole_quant_blocks():
    from qlora_kit.merging.checkpoint import row_blocks

    assert list(row_blocks(10, 256, 4 * 256 * 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(row_blocks(256, 256, 4 * 256 * 100, unit=64)) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    assert list(row_blocks(128, 4096, 16, unit=64)) == [(0, 64), (64, 128)]  # at least one unit per block
    assert list(row_blocks(5, 4096, 1 << 30)) == [(0, 5)]


def hf_logits(model, rows: list[list[int]]) -> list[np.ndarray]:
    """transformers' whole-model float32 logits for each row (what the streamed reference must reproduce)."""
    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits[0].float().numpy() for ids in rows]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"])
def test_streamed_reference_equals_a_whole_model_forward(tiny_model_dir, tmp_path, kind):
    """Same probe, same numbers: the layer-by-layer reference (head in 8 blocks of 64 rows) against transformers'
    whole float32 model. Gemma's embedding scale, tied head and soft-capping, Qwen's biases, Phi-3's fused
    projections all run through the model class's own code."""
    from transformers import AutoModelForCausalLM

    from qlora_kit.gguf.verify.reference import reference_logits

    model = make_model(tmp_path, tiny_model_dir, kind)
    rows = [[1, 5, 9, 200, 7, 7, 3], [2, 40, 41, 42, 100, 300, 301, 5, 6, 500, 2, 0]]
    whole = hf_logits(AutoModelForCausalLM.from_pretrained(model, dtype="float32").eval(), rows)
    streamed = reference_logits(model, rows, device="cpu", block_bytes=64 * 256 * 4)
    for a, b in zip(whole, streamed):
        assert a.shape == b.shape
        # float32 noise, which grows with the logits' size (and differs between CPUs' matmul kernels: 1.1e-5 on an
        # Intel Xeon with AVX-512 for Gemma 3's logits, under 1e-5 on AMD EPYC)
        assert np.abs(a - b).max() <= 1e-6 * max(10.0, np.abs(a).max()), (np.abs(a - b).max(), np.abs(a).max())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_streamed_reference_on_the_gpu_gives_the_cpu_numbers(tiny_model_dir, tmp_path, kind):
    """Verification runs the reference on the GPU when there is one (its default device): same probe, same
    numbers as on the CPU, within float32 kernel differences."""
    from qlora_kit.gguf.verify.reference import reference_logits

    model = make_model(tmp_path, tiny_model_dir, kind)
    rows = [[1, 5, 9, 200, 7, 7, 3], [2, 40, 41, 42, 100, 300, 301, 5, 6, 500, 2, 0]]
    cpu = reference_logits(model, rows, device="cpu", block_bytes=64 * 256 * 4)
    gpu = reference_logits(model, rows, block_bytes=64 * 256 * 4)  # no device: CUDA is chosen
    for a, b in zip(cpu, gpu):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-3 * max(1.0, np.abs(a).max()), np.abs(a - b).max()


def _large_vocab_llama(root, tiny_model_dir, vocab: int):
    """A 2-layer bf16 Llama with `vocab` rows of embedding and head (the tiny tokenizer's ids are a prefix)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", vocab_size=vocab, hidden_size=256, intermediate_size=512,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, tie_word_embeddings=False, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # a peaked head (see test_export.make_model), so the f16 logit check is meaningful
        model.get_input_embeddings().weight.mul_(5.0)
        model.lm_head.weight.copy_(model.get_input_embeddings().weight)
    out = root / f"llama-{vocab}"
    model.to(torch.bfloat16).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tiny_model_dir / name).is_file():  # the built-in model has no chat_template.jinja of its own
            shutil.copy2(tiny_model_dir / name, out / name)
    return out


MEASURE = """
import sys
import torch, transformers, gguf, llama_cpp  # the fixed cost every export pays
from qlora_kit.cli import main
from qlora_kit.runtime.memory import peak_rss_bytes
code = main(sys.argv[1:])
print("PEAK", peak_rss_bytes())
sys.exit(code)
"""


def _peak(*args) -> int:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.split("PEAK")[-1])


REFERENCE = """
import sys
import torch, transformers, gguf, llama_cpp
from qlora_kit.gguf.verify.reference import reference_logits
from qlora_kit.runtime.memory import peak_rss_bytes
reference_logits(sys.argv[1], [[1, 5, 9, 200, 7, 7, 3, 2]], device="cpu")
print("PEAK", peak_rss_bytes())
"""


def test_a_large_embedding_does_not_raise_the_peak(tiny_model_dir, tmp_path):
    """Embedding and head of 65,536 vs 196,608 rows x 256 (64 vs 192 MiB each in float32; the block budget is
    16 MiB): the conversion peaks the same (to F32, and to Q4_K_M), and so does the streamed reference forward,
    where converting or loading the matrices whole needs 2 x 128 MiB more. With verification, only what must grow
    with the vocabulary grows: the GGUF llama.cpp maps and the logits."""
    medium = _large_vocab_llama(tmp_path, tiny_model_dir, 65536)
    large = _large_vocab_llama(tmp_path, tiny_model_dir, 196608)
    grown = (196608 - 65536) * 256 * 4  # float32 bytes of one matrix's extra rows
    convert = [_peak("-c", MEASURE, "export", str(m), "--quant", "f32", "--no-verify", "--out", str(tmp_path / f"c{i}"))
               for i, m in enumerate((medium, large))]
    # Q4_K_M: the embedding in Q4_K and the head in Q6_K, quantized by ggml a row block at a time (llama.cpp's
    # quantizer converted each whole to float32 first: +192 MiB here).
    k_quant = [_peak("-c", MEASURE, "export", str(m), "--quant", "q4_k_m", "--no-verify", "--out",
                     str(tmp_path / f"k{i}")) for i, m in enumerate((medium, large))]
    reference = [_peak("-c", REFERENCE, str(m)) for m in (medium, large)]
    print(f"conversion peak RSS: {convert[0] / 2**20:.0f} -> {convert[1] / 2**20:.0f} MiB; Q4_K_M: "
          f"{k_quant[0] / 2**20:.0f} -> {k_quant[1] / 2**20:.0f} MiB; streamed reference: "
          f"{reference[0] / 2**20:.0f} -> {reference[1] / 2**20:.0f} MiB")
    assert convert[1] - convert[0] < 16 * 2**20 <= grown / 8
    assert k_quant[1] - k_quant[0] < 16 * 2**20
    assert reference[1] - reference[0] < 16 * 2**20

    verify = [_peak("-c", MEASURE, "export", str(m), "--quant", "f16", "--samples", "1", "--out",
                    str(tmp_path / f"v{i}")) for i, m in enumerate((medium, large))]
    reports = [json.loads((tmp_path / f"v{i}" / "export_report.json").read_text())["exports"]["f16"] for i in (0, 1)]
    assert all(r["verification"]["passed"] for r in reports), [r["verification"]["summary"] for r in reports]
    tokens = reports[1]["verification"]["logits"]["tokens"]
    # Per extra vocabulary entry: the reference and llama.cpp's logits (ours, llama-cpp-python's n_ctx x vocab
    # array and llama.cpp's own buffer), 4 bytes each, and llama.cpp's token list (~128 bytes a token).
    logits = (196608 - 65536) * (4 * (2 * tokens + 2 * (tokens + 8)) + 128)
    print(f"verification peak RSS: {verify[0] / 2**20:.0f} -> {verify[1] / 2**20:.0f} MiB; GGUF "
          f"{reports[0]['bytes'] / 2**20:.0f} -> {reports[1]['bytes'] / 2**20:.0f} MiB; logits +{logits / 2**20:.0f} MiB")
    # Loading the model whole in float32, as verification did before, adds 2 x 128 MiB on top of this bound.
    assert verify[1] - verify[0] < reports[1]["bytes"] - reports[0]["bytes"] + logits + 48 * 2**20


def test_not_enough_memory_is_refused_before_writing(tiny_model_dir, tmp_path, monkeypatch):
    """Only the query of available memory is faked; nothing is created but the (empty) output directory."""
    from qlora_kit.errors import UsageError
    from qlora_kit.gguf.run import ExportOptions, export
    from qlora_kit.gguf.tensors import resources

    monkeypatch.setattr(resources, "available_memory", lambda: 50 * 2**20)
    with pytest.raises(UsageError, match=r"^not enough memory for the conversion: it needs about 0\.\d\d GiB, "
                                         r"0\.05 GiB available"):
        export(tiny_model_dir, ExportOptions(quant=["f16"], verify=False), tmp_path / "gguf")
    assert not list((tmp_path / "gguf").iterdir())
    # Enough for the conversion, not for verification: refused once the probe rows are known, still before writing.
    need = resources.conversion_bytes(tiny_model_dir)
    monkeypatch.setattr(resources, "available_memory", lambda: need + 1)
    monkeypatch.setattr(resources, "LLAMA_CPP_COMPUTE", 2**40)
    with pytest.raises(UsageError, match=r"not enough memory for verification"):
        export(tiny_model_dir, ExportOptions(quant=["f16"]), tmp_path / "gguf2")
    assert not list((tmp_path / "gguf2").iterdir())


def test_no_hf_tokenizer_is_alive_while_the_files_are_written(tiny_model_dir, tmp_path, monkeypatch):
    """The verifier keeps the HF tokenizer's ids, not the tokenizer (hundreds of MiB for a 150k vocabulary): when
    the conversion starts, no transformers tokenizer object is alive in the process."""
    import gc

    from transformers import PreTrainedTokenizerBase

    from qlora_kit.gguf import run
    from qlora_kit.gguf.run import ExportOptions, export

    alive = []
    write_gguf = run.write_gguf

    def counting_write(*args, **kwargs):
        gc.collect()
        alive.append(sum(issubclass(type(o), PreTrainedTokenizerBase) for o in gc.get_objects()))
        return write_gguf(*args, **kwargs)

    monkeypatch.setattr(run, "write_gguf", counting_write)
    out = export(tiny_model_dir, ExportOptions(quant=["f16", "q8_0"]), tmp_path / "gguf")
    report = json.loads((out / "export_report.json").read_text())
    assert alive == [0, 0]
    assert all(e["verification"]["passed"] and e["verification"]["tokens"]["equal"] >= 12
               for e in report["exports"].values())



@pytest.mark.parametrize("base, train_dtype, out_dtype", [("dequantized", torch.bfloat16, torch.bfloat16),
                                                          ("original", torch.float32, torch.float32)])
def test_merge_in_row_blocks_writes_the_same_bytes(tiny_model_dir, tmp_path, base, train_dtype, out_dtype):
    """Merging in blocks of 64 rows (the NF4 round trip in two passes, the LoRA update per block, linear and
    embedding) gives the same files as one block per tensor, and those hold what merging whole tensors gave."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qlora_kit.merging.adapter import load_adapter
    from qlora_kit.merging.checkpoint import Checkpoint, nf4_roundtrip
    from qlora_kit.merging.merge import merge_weights
    from qlora_kit.recipe.options import MergeOptions

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "down_proj", "embed_tokens"]))
    for name, param in model.named_parameters():
        if "lora_B" in name or "lora_embedding_B" in name:
            param.data.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    ckpt, adapter = Checkpoint(tiny_model_dir), load_adapter(tmp_path / "adapter")
    assert adapter.linear and adapter.embedding
    files = {}
    for budget in (WHOLE, 64 * 256 * 4):  # tiny-llama is 256 wide: 64-row blocks, 2 to 8 per matrix
        out = tmp_path / f"out-{budget}"
        out.mkdir()
        facts = merge_weights(ckpt, adapter, out, MergeOptions(base=base), train_dtype, out_dtype, block_bytes=budget)
        assert facts["lora_merged"] == 2 * 2 + 1
        files[budget] = (out / "model.safetensors").read_bytes()
    assert files[WHOLE] == files[64 * 256 * 4]
    merged = load_file(tmp_path / f"out-{WHOLE}" / "model.safetensors")
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
                 "model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight"):
        whole = ckpt.get(name)
        if base == "dequantized" and "embed" not in name:
            whole = nf4_roundtrip(whole, train_dtype)
        if adapter.touches(name):
            whole = adapter.apply(name, whole)
        assert torch.equal(merged[name], whole.to(out_dtype)), name
