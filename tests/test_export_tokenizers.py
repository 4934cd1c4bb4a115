"""Choosing the GGUF tokenizer by behaviour, on the family tokenizer fixtures (no model, no conversion): llama.cpp
must tokenize the probe texts exactly as HF does with the candidate chosen, and say so precisely when it cannot."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

TOKENIZERS = Path(__file__).parent / "assets" / "tokenizers"


def choose_for(path: Path):
    from qlora_kit.gguf.vocab.expectations import TokenExpectations
    from qlora_kit.gguf.vocab.tokenizer_probe import choose
    from qlora_kit.gguf.vocab.vocab import candidates, effective_tokenizer_json, load_hf_tokenizer

    hf = load_hf_tokenizer(path)
    data = effective_tokenizer_json(hf, path / "tokenizer.json")
    plans = candidates(path, data, True)
    for plan in plans:
        plan.fit(len(hf), str(path))
    return choose(plans, TokenExpectations.of(hf, data=data), path.name, str(path))


@pytest.mark.parametrize("family, label, source", [
    ("llama3", "gpt2/llama-bpe", "byte-level BPE"),
    ("llama3-gguf", "gpt2/gpt-2", "byte-level BPE"),  # byte_fallback true, yet byte-level by behaviour
    ("qwen2", "gpt2/qwen2", "byte-level BPE"),
    ("tekken", "gpt2/tekken", "byte-level BPE"),
    ("gemma2", "llama/default, add_space_prefix=false", "scores from merge ranks"),
    ("gemma3", "llama/default, add_space_prefix=false", "scores from merge ranks"),
    ("llama2", "llama/default, add_space_prefix=true", "scores from merge ranks"),
    ("phi3", "llama/default, add_space_prefix=true", "scores from merge ranks"),
])
def test_each_family_gets_the_tokenizer_llama_cpp_reproduces(family, label, source):
    plan, probe = choose_for(TOKENIZERS / family)
    assert plan.label == label and source in plan.source
    first = probe["tried"][0]
    assert first["candidate"] == label, probe["tried"]  # identified up front, not found by trial
    known = [k["text"] for k in probe["known_differences"]]
    if family in ("llama2", "phi3"):
        # transformers 5's Metaspace ('first' scheme) neither doubles the '▁' before a leading space nor adds one
        # after a special token; llama.cpp's SentencePiece tokenizer does both. Everything else must match.
        assert " Hello world" in known and all(k.startswith(" ") or "<" in k for k in known)
        assert first["equal"] == first["texts"] - len(known) >= 9
    elif family == "qwen2":
        # Qwen 2's NFC normalizer recomposes decomposed text (llama.cpp's test strings hold some); llama.cpp has no
        # normalizer for BPE vocabularies. Everything already in NFC must match.
        import unicodedata

        assert known and all(unicodedata.normalize("NFC", k) != k for k in known)
        assert first["equal"] == first["texts"] - len(known) >= 300
    else:
        assert known == [] and first["equal"] == first["texts"] >= 300


def test_sentencepiece_scores_follow_merge_ranks():
    from qlora_kit.gguf.vocab.spm_vocab import from_tokenizer_json

    data = json.loads((TOKENIZERS / "llama2" / "tokenizer.json").read_text())
    plan = from_tokenizer_json(data, "llama2")
    merges = data["model"]["merges"]
    made = [a + b for a, b in (m if isinstance(m, list) else m.split(" ", 1) for m in merges)]
    scores = {t: s for t, s in zip(plan.tokens, plan.scores)}
    assert [scores[t] for t in made[:5]] == [0.0, -1.0, -2.0, -3.0, -4.0]
    assert plan.types[plan.tokens.index("<0x0A>")] == 6 and plan.types[plan.tokens.index("<s>")] == 3
    assert min(scores[t] for t in made) > max(s for t, s in scores.items() if t not in set(made))


def test_a_tokenizer_llama_cpp_cannot_reproduce_is_refused_with_the_first_differing_text(tmp_path):
    """Lowercasing in the normalizer: no GGUF tokenizer does it, so every candidate differs on 'Hello world'."""
    from qlora_kit.errors import UsageError

    path = tmp_path / "lower"
    shutil.copytree(TOKENIZERS / "qwen2", path)
    data = json.loads((path / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "Lowercase"}
    (path / "tokenizer.json").write_text(json.dumps(data))
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(UsageError) as exc:
        choose_for(path)
    message = str(exc.value)
    assert "no llama.cpp tokenizer reproduces this tokenizer (tried gpt2/qwen2, gpt2/llama-bpe" in message
    assert "differs first on 'Hello world': HF ids [" in message and "llama.cpp ids [" in message
    assert "\n" not in message


def test_fast_array_packing_writes_gguf_writers_bytes():
    """Our writer packs a real vocabulary's arrays (byte-level tokens with non-ASCII, merges, types, scores) and
    the edge cases (bytes, bool, out-of-range ints, mixed lists) exactly as gguf's GGUFWriter does."""
    import gguf

    from qlora_kit.gguf.gguf_writer import GGUFWriter
    from qlora_kit.gguf.vocab.vocab import load_hf_tokenizer

    hf = load_hf_tokenizer(TOKENIZERS / "qwen2")
    tokens = [t for t, _ in sorted(hf.get_vocab().items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) for m in json.loads((TOKENIZERS / "qwen2" / "tokenizer.json").read_text())["model"]["merges"]]
    assert any(not t.isascii() for t in tokens) and len(merges) > 100
    ours, theirs = GGUFWriter(None, "llama"), gguf.GGUFWriter(None, "llama")
    arrays = [tokens, merges, [1, 2, 3, 6] * 50, [0.0, -1000.0, 1e-3, 3.14159265358979] * 50, [b"\x00ab", "é"],
              [True, False], [1, 2**40], [1, 2.5], ["a", 1], [2**31 - 1, -2**31]]
    for values in arrays:
        for add_vtype in (True, False):
            try:
                expected = theirs._pack_val(values, gguf.GGUFValueType.ARRAY, add_vtype)
            except (ValueError, struct.error) as exc:
                with pytest.raises(type(exc)):
                    ours._pack_val(values, gguf.GGUFValueType.ARRAY, add_vtype)
                continue
            assert ours._pack_val(values, gguf.GGUFValueType.ARRAY, add_vtype) == expected, values[:4]
    assert ours._pack_val(tokens, gguf.GGUFValueType.ARRAY, True, sub_type=gguf.GGUFValueType.STRING) == \
        theirs._pack_val(tokens, gguf.GGUFValueType.ARRAY, True, sub_type=gguf.GGUFValueType.STRING)


def _full_and_reduced(path: Path):
    from qlora_kit.gguf.vocab.expectations import TokenExpectations
    from qlora_kit.gguf.vocab.vocab import effective_tokenizer_json, load_hf_tokenizer, probe_tokenizer, special_adds

    full = load_hf_tokenizer(path)
    reduced, data = probe_tokenizer(path)
    return ((TokenExpectations.of(full), special_adds(full), effective_tokenizer_json(full, path / "tokenizer.json")),
            (TokenExpectations.of(reduced), special_adds(reduced), data), reduced)


def _merge_pairs(data: dict) -> list:
    return [m.split(" ") if isinstance(m, str) else m for m in data["model"]["merges"]]


@pytest.mark.parametrize("family", ["llama3", "llama3-gguf", "qwen2", "tekken", "gemma2", "gemma3", "llama2", "phi3"])
def test_tokenizer_cut_to_the_probe_texts_gives_the_full_tokenizers_ids(family):
    """Export tokenizes the probe texts with transformers' tokenizer holding only the vocabulary and merges those
    texts reach (a 152k vocabulary costs ~170 MiB loaded whole): its ids, BOS/EOS behaviour, added tokens and the
    effective tokenizer.json (class pipeline, whole vocabulary) equal the full tokenizer's."""
    (full, full_adds, full_data), (cut, cut_adds, cut_data), tokenizer = _full_and_reduced(TOKENIZERS / family)
    assert cut == full and cut_adds == full_adds
    assert {k: v for k, v in cut_data.items() if k != "model"} == {k: v for k, v in full_data.items() if k != "model"}
    assert cut_data["model"]["vocab"] == full_data["model"]["vocab"]
    assert _merge_pairs(cut_data) == _merge_pairs(full_data)
    held = len(tokenizer.backend_tokenizer.get_vocab())
    assert held < len(full_data["model"]["vocab"]), held  # really cut (the probe set reaches most of these small vocabularies)
    with pytest.raises(RuntimeError, match="not cut for"):  # it answers only for the texts it was cut for
        tokenizer("a text that is not a probe", add_special_tokens=False)


def test_cut_tokenizer_keeps_merges_across_characters_bpe_drops(tmp_path):
    """Without an unknown token or byte fallback, BPE drops characters missing from the vocabulary and merges
    their neighbours across the gap: here " " (the vocabulary has "▁"), so "Hello world" is one BPE input, and a
    merge "Hello" + "w" fires though "Hellow" is in no probe text. The cut keeps such merges."""
    path = tmp_path / "drops"
    shutil.copytree(TOKENIZERS / "phi3", path)
    data = json.loads((path / "tokenizer.json").read_text())
    data["normalizer"], data["pre_tokenizer"] = None, None
    model = data["model"]
    model["byte_fallback"] = False
    assert model["unk_token"] is None and " " not in model["vocab"] and "Hellow" not in model["vocab"]
    # "Hellow" takes the id of a "▁" token (unreachable without the Metaspace pre-tokenizer): ids stay as they are.
    gone = max((t for t in model["vocab"] if t.startswith("▁")), key=len)
    model["vocab"]["Hellow"] = model["vocab"].pop(gone)
    model["merges"] = [m for m in model["merges"] if gone not in (m[0], m[1], m[0] + m[1])] + [["Hello", "w"]]
    (path / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "TokenizersBackend"}))
    (full, _, _), (cut, _, _), tokenizer = _full_and_reduced(path)
    hello = dict(zip(full.texts, full.ids))["Hello world"]
    assert tokenizer.convert_ids_to_tokens(hello)[0] == "Hellow", tokenizer.convert_ids_to_tokens(hello)
    assert cut == full


def test_tokenizer_whose_class_adds_tokens_of_its_own_is_loaded_whole(tmp_path):
    """A class that adds special tokens missing from the files (Gemma's <pad>/<mask> defaults) numbers them after
    the vocabulary's size, which a cut vocabulary would change: such a tokenizer is loaded whole."""
    from qlora_kit.gguf.vocab.vocab import probe_tokenizer

    path = tmp_path / "adds"
    shutil.copytree(TOKENIZERS / "llama2", path)
    (path / "config.json").write_text(json.dumps({"model_type": "gemma"}))
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("tokenizer_class", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer, _ = probe_tokenizer(path)
    assert type(tokenizer).__name__ == "GemmaTokenizer"  # not the cut one's wrapper
    (full, _, _), (cut, _, _), _ = _full_and_reduced(path)
    assert cut == full


@pytest.mark.slow
def test_a_vocabulary_that_would_crash_llama_cpp_is_refused_and_not_written(tmp_path):
    """SentencePiece with byte fallback, one byte token removed (<0xC3>, the lead byte of 'é'): written as a GGUF
    'llama' vocabulary, llama.cpp throws std::out_of_range from llama_vocab::byte_to_token on any text holding that
    byte outside the vocabulary, uncaught: the process aborts. Export probes every candidate in a child process and
    refuses in one line naming the text; no GGUF is left behind."""
    import torch
    from conftest import run_cli
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = tmp_path / "broken"
    shutil.copytree(TOKENIZERS / "llama2", model_dir)
    data = json.loads((model_dir / "tokenizer.json").read_text())
    del data["model"]["vocab"]["<0xC3>"]
    (model_dir / "tokenizer.json").write_text(json.dumps(data))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=520, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    out = tmp_path / "gguf"
    done = run_cli("export", str(model_dir), "--out", str(out), "--quant", "f16")
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "refused as unsafe: llama/default, add_space_prefix=true: llama.cpp crashes (SIGABRT) tokenizing" \
        in lines[0], lines[0]
    assert not (out.exists() and list(out.glob("*.gguf")))


def test_verification_reports_a_file_that_crashes_llama_cpp_instead_of_dying(tmp_path):
    """`export --check-only` and export's verification tokenize in a child process: a GGUF made elsewhere whose
    vocabulary aborts llama.cpp (SentencePiece without <0xC3>) is a failed check naming the text and the signal."""
    from qlora_kit.gguf.verify.verify import check_tokens, judge
    from qlora_kit.gguf.vocab.expectations import TokenExpectations
    from qlora_kit.gguf.vocab.spm_vocab import from_tokenizer_json
    from qlora_kit.gguf.vocab.tokenizer_probe import write_vocab_only
    from qlora_kit.gguf.vocab.vocab import load_hf_tokenizer

    data = json.loads((TOKENIZERS / "llama2" / "tokenizer.json").read_text())
    plan = from_tokenizer_json(data, "llama2")
    plan.tokens[plan.tokens.index("<0xC3>")] = "<removed>"
    write_vocab_only(tmp_path / "broken.gguf", plan, "broken")
    tokens = check_tokens(tmp_path / "broken.gguf", TokenExpectations.of(load_hf_tokenizer(TOKENIZERS / "llama2")))
    assert tokens["crash"].startswith("llama.cpp crashes (SIGABRT) tokenizing") and tokens["equal"] == 0
    passed, summary = judge("f32", tokens, {})
    assert not passed and summary.endswith("this file would abort llama.cpp (and Ollama) on such input")
