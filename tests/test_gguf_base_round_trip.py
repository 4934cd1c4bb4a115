"""A GGUF base whose transformers conversion splits text into single characters: it trains, merges and exports back
to a GGUF that tokenizes every probe exactly as the source file does.

The source is a tiny random Gemma 3 written as a GGUF that carries Gemma 3's real SentencePiece vocabulary (262,144
tokens, scores, token types, special ids, from gemma-3-270m's GGUF header; tests/fetch_llama_vocab.py): transformers'
conversion of it, saved as a checkpoint and loaded again, splits "Convert to ISO 8601" into single characters
(measured below); the tokenizer built from the GGUF does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe
from test_gguf_vocabularies import VOCAB_DIR, llama_cpp_tests, vocab_file

pytestmark = pytest.mark.slow
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
                  "m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                  "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def tiny_gemma3_with(vocab_path: Path, out: Path) -> Path:
    """A random 2-layer Gemma 3 (text) with the vocabulary's tokenizer (ours, built from the GGUF)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from qlora_kit.gguf.vocab.gguf_tokenizer import build

    tokenizer, vocab = build(vocab_path, out, str(vocab_path), chat_template=GEMMA_TEMPLATE)
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(vocab.tokens), hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                              query_pre_attn_scalar=256, max_position_embeddings=512, sliding_window=64, bos_token_id=vocab.special["bos"],
                              eos_token_id=vocab.special["eos"], pad_token_id=vocab.special["pad"])
    Gemma3ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def with_source_vocabulary(model_gguf: Path, vocab_path: Path, out: Path) -> Path:
    """model_gguf's tensors and model keys, vocab_path's tokenizer keys and name: the file as llama.cpp's converter
    would have written it for a model with that vocabulary."""
    import gguf

    model, vocab = gguf.GGUFReader(model_gguf), gguf.GGUFReader(vocab_path)
    writer = gguf.GGUFWriter(str(out), str(model.get_field("general.architecture").contents()))
    for reader, keep in ((model, lambda k: not k.startswith(("tokenizer.", "general.name"))),
                         (vocab, lambda k: k.startswith("tokenizer.") or k == "general.name")):
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture" or not keep(key):
                continue
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), kind, sub_type=sub)
    for tensor in model.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_shape=list(reversed(tensor.shape.tolist())),
                          raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_gemma3_vocabulary_gguf_base_trains_merges_and_exports_back(tmp_path):
    from transformers import AutoTokenizer

    from qlora_kit.gguf.run import ExportOptions, export
    from qlora_kit.gguf.vocab.gguf_tokenizer import probe_texts
    from qlora_kit.gguf.vocab.llama_tokens import tokenize
    from qlora_kit.gguf.vocab.probe_set import invalid_utf8_for

    gemma3 = VOCAB_DIR / "gemma-3-vocab.gguf"
    assert gemma3.is_file(), f"run `python tests/fetch_llama_vocab.py {VOCAB_DIR}` (make test does)"
    hf_dir = tiny_gemma3_with(gemma3, tmp_path / "tiny-gemma3")
    export(hf_dir, ExportOptions(quant=["f32"], verify=False), tmp_path / "first")
    source = with_source_vocabulary(next((tmp_path / "first").glob("*-f32.gguf")), gemma3, tmp_path / "base.gguf")

    text = "Convert to ISO 8601: March 5, 2021"
    (want,) = tokenize(source, [text])
    theirs = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    theirs.save_pretrained(tmp_path / "theirs")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "theirs").encode(text, add_special_tokens=False)
    assert len(reloaded) == len(text) > 1.5 * len(want)  # transformers': one id per character

    recipe = write_recipe(tmp_path / "gemma3-gguf.yaml", model={"name": f"gguf:{source}", "backend": "hf"},
                          train={"max_steps": 3}, merge={"enabled": True, "verify": False},
                          export={"enabled": True, "quant": ["f16"]}, eval={"enabled": False})
    done = run_cli("train", str(recipe))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "gemma3-gguf"
    status = json.loads((run / "run.json").read_text())
    base_tokenizer = AutoTokenizer.from_pretrained(status["base_source"]["cache_dir"])
    assert base_tokenizer.encode(text, add_special_tokens=False) == want
    report = json.loads((run / "gguf" / "export_report.json").read_text())
    assert report["exports"]["f16"]["verification"]["passed"], report["exports"]["f16"]["verification"]
    exported = run / "gguf" / report["exports"]["f16"]["file"]

    texts = probe_texts(base_tokenizer) + llama_cpp_tests(vocab_file("llama-spm"))[0]
    for special in (True, False):
        assert tokenize(exported, texts, special=special) == tokenize(source, texts, special=special)
    tokenize(exported, invalid_utf8_for(exported))  # and no abort on invalid UTF-8
