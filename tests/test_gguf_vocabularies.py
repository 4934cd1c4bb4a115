"""Every vocabulary llama.cpp ships, both ways: imported as a GGUF base's tokenizer, and exported back.

The files are `models/ggml-vocab-*.gguf` of the pinned llama-cpp-python sdist, with llama.cpp's own tokenizer test
strings (`.inp`) and expected ids (`.out`); `make test` fetches them (tests/fetch_llama_vocab.py) into
$QLORA_KIT_LLAMA_VOCAB. For each vocabulary:
(a) import: the HF tokenizer built from the GGUF (qlora_kit.gguf.vocab.gguf_tokenizer) gives the `.out` ids on every
    `.inp` string (specials not parsed, as llama.cpp's test runs) and llama.cpp's ids on every probe (specials parsed);
(b) export: a tiny random model saved with that tokenizer is exported (`qlora_kit.gguf.run.export`: candidates,
    child-process probe, the chosen vocabulary written): llama.cpp tokenizes every probe with the written file without
    aborting and exactly as with the source file.
llama.cpp runs in a child process throughout, so an abort is a failure naming the text, not a dead test worker.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~20 exports of real vocabularies (up to 262k tokens)
VOCAB_DIR = Path(os.environ.get("QLORA_KIT_LLAMA_VOCAB", Path(__file__).parents[1] / ".venv" / "llama-vocab"))
SEP = "\n__ggml_vocab_test__\n"
# The pinned sdist's vocabularies and their tokenizer models (a version bump that adds one fails the inventory test).
SHIPPED = {"aquila": "gpt2", "baichuan": "llama", "bert-bge": "bert", "command-r": "gpt2", "deepseek-coder": "gpt2",
           "deepseek-llm": "gpt2", "falcon": "gpt2", "gemma-4": "gemma4", "gpt-2": "gpt2", "gpt-neox": "gpt2",
           "llama-bpe": "gpt2", "llama-spm": "llama", "mpt": "gpt2", "nomic-bert-moe": "t5", "phi-3": "llama",
           "qwen2": "gpt2", "qwen35": "gpt2", "refact": "gpt2", "starcoder": "gpt2"}
# Export back is for causal language models; these vocabularies belong only to encoders.
NOT_EXPORTED = {
    "bert": "a WordPiece vocabulary ships only with BERT-style encoders, which llama.cpp runs as embedding models; "
            "qlora-kit trains and exports causal LMs (SentencePiece or BPE vocabularies)",
    "t5": "a Unigram vocabulary with a precompiled normalizer ships here only with an encoder (nomic-bert-moe); "
          "export writes causal LMs' SentencePiece or BPE vocabularies",
}


def vocab_file(name: str) -> Path:
    path = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `python tests/fetch_llama_vocab.py {VOCAB_DIR}` (make test does)")
    return path


def llama_cpp_tests(path: Path) -> tuple[list[str], list[list[int]]] | None:
    inp, out = Path(f"{path}.inp"), Path(f"{path}.out")
    if not inp.is_file():
        return None
    texts = inp.read_text(encoding="utf-8").split(SEP)
    texts = texts[:-1] if texts and texts[-1] == "" else texts
    ids = [[int(x) for x in line.split()] for line in out.read_text(encoding="utf-8").split("\n")[:len(texts)]]
    assert len(ids) == len(texts)
    return texts, ids


def test_inventory_matches_the_pinned_sdist():
    from qlora_kit.gguf.vocab.probe_set import tokenizer_model

    found = {p.name[len("ggml-vocab-"):-len(".gguf")] for p in VOCAB_DIR.glob("ggml-vocab-*.gguf")}
    assert found == set(SHIPPED), f"fetched {sorted(found)}; update SHIPPED for the pinned llama-cpp-python"
    for name, model in SHIPPED.items():
        assert tokenizer_model(vocab_file(name)) == model


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_vocabulary_imports_and_exports_back(name, tmp_path):
    from qlora_kit.gguf.vocab.gguf_tokenizer import build, judge, probe_texts
    from qlora_kit.gguf.vocab.llama_tokens import tokenize
    from qlora_kit.gguf.vocab.probe_set import invalid_utf8_for

    source = vocab_file(name)
    model_dir = tmp_path / "model"
    tokenizer, vocab = build(source, model_dir, str(source))
    tests = llama_cpp_tests(source)
    if tests is not None:  # (a) llama.cpp's own expectations, specials not parsed
        texts, want = tests
        assert tokenize(source, texts, special=False) == want  # llama.cpp itself passes its test here
        got = [tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] for t in texts]
        wrong = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
        assert not wrong, f"{len(wrong)} of {len(texts)} .inp strings differ; first {wrong[0]}"
    verdict = judge(tokenizer, source, name)  # (a) every probe, specials parsed
    assert verdict.first is None and verdict.equal >= 340, verdict.line()
    tokenize(source, invalid_utf8_for(source))  # no abort on invalid UTF-8 (but llama.cpp's own, see below)
    if vocab.model in NOT_EXPORTED:
        pytest.skip(f"export back: {NOT_EXPORTED[vocab.model]}")
    exported = export_tiny_model(model_dir, tmp_path / "gguf", len(vocab.tokens))  # (b)
    texts = probe_texts(tokenizer) + (tests[0] if tests else [])
    assert tokenize(exported, texts) == tokenize(source, texts)
    assert tokenize(exported, texts, special=False) == tokenize(source, texts, special=False)
    tokenize(exported, invalid_utf8_for(exported))


def export_tiny_model(model_dir: Path, out: Path, n_vocab: int) -> Path:
    """A random one-layer Llama with this vocabulary, saved beside its tokenizer and exported to GGUF by
    `qlora_kit.gguf.run.export` (the vocabulary step: candidates, the child-process probe, BOS/EOS, special ids).
    Logit verification is off: these weights are not what is tested here (test_export.py verifies families)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlora_kit.gguf.run import ExportOptions, export

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=n_vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    export(model_dir, ExportOptions(quant=["f32"], verify=False), out)
    return next(out.glob("*-f32.gguf"))


def test_llama_cpp_own_aborts_are_still_upstream():
    """The inputs export does not refuse for (probe_set.UPSTREAM_CRASHES) still abort llama.cpp with its own
    vocabulary files; when an upstream fix lands, this fails and the exemption goes."""
    from qlora_kit.gguf.vocab.llama_tokens import TokenizerCrash, tokenize
    from qlora_kit.gguf.vocab.probe_set import UPSTREAM_CRASHES

    for text, (models, why) in UPSTREAM_CRASHES.items():
        for name, model in SHIPPED.items():
            if model in models and name in ("gpt-2", "bert-bge", "gemma-4"):
                with pytest.raises(TokenizerCrash, match=r"llama\.cpp crashes \(SIGABRT\) tokenizing"):
                    tokenize(vocab_file(name), [text])
    assert tokenize(vocab_file("llama-spm"), list(UPSTREAM_CRASHES))  # SentencePiece decodes it without aborting
