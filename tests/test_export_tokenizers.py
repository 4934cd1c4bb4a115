"""Choosing the GGUF tokenizer by behaviour, on the family tokenizer fixtures (no model, no conversion): llama.cpp
must tokenize the probe texts exactly as HF does with the candidate chosen, and say so precisely when it cannot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

TOKENIZERS = Path(__file__).parent / "assets" / "tokenizers"


def choose_for(path: Path):
    from qlora_kit.export.tokenizer_probe import choose
    from qlora_kit.export.verify import TokenExpectations
    from qlora_kit.export.vocab import candidates, effective_tokenizer_json, load_hf_tokenizer

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
    else:
        assert known == [] and first["equal"] == first["texts"] >= 14


def test_sentencepiece_scores_follow_merge_ranks():
    from qlora_kit.export.spm_vocab import from_tokenizer_json

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
