"""The tokenizer, written into GGUF metadata the way llama.cpp reads it.

Candidates: byte-level BPE ("gpt2") with each pre-tokenizer llama.cpp knows, the pre-tokenizer identified from the
tokenizer's own regex first; SentencePiece ("llama") from tokenizer.model when present, else built from
tokenizer.json (spm_vocab.py). A wrong `tokenizer.ggml.pre` or score makes llama.cpp split text differently
without any error, so the candidate written is the first one llama.cpp proves equal to the HF tokenizer on probe
texts (tokenizer_probe.py); none equal is a one-line refusal naming the first differing text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from qlora_kit.errors import UsageError
from qlora_kit.gguf.vocab.gguf_bpe_pre import LLAMA3_REGEX, QWEN2_REGEX, TEKKEN_REGEX
from qlora_kit.gguf.vocab.vocab_plan import CONTROL, NORMAL, UNUSED, USER_DEFINED, VocabPlan

# Pre-tokenizer regexes (as they appear in tokenizer.json) -> llama.cpp's pre-tokenizer names.
KNOWN_SPLIT_REGEXES = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2", TEKKEN_REGEX: "tekken"}
# Tried in this order after the identified one; each is a pre-tokenizer llama.cpp 0.3.36 implements.
GPT2_PRE_TOKENIZERS = ("llama-bpe", "qwen2", "gpt-2", "tekken", "smollm", "deepseek-llm", "gpt-4o", "default")
SPECIAL_TEXTS = ("Hello", "Hello world")  # special_adds' and TokenExpectations.with_specials' texts
SUPPORTED = ("byte-level BPE (GGUF 'gpt2'), SentencePiece-style BPE or Unigram with <0xNN> byte tokens "
             "(GGUF 'llama')")


def identify_pre_tokenizer(spec: dict | None) -> str | None:
    """`pre_tokenizer` section of tokenizer.json -> llama.cpp pre-tokenizer name it names, or None."""
    if spec and spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    if spec and spec.get("type") == "Sequence":
        parts = spec.get("pretokenizers", [])
        splits = [p for p in parts if p.get("type") == "Split"]
        byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
        if len(splits) == 1 and len(byte_level) == 1 and not byte_level[0].get("use_regex", True):
            return KNOWN_SPLIT_REGEXES.get((splits[0].get("pattern") or {}).get("Regex"))
    return None


def load_hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's tokenizer files
        raise unloadable(model_dir, exc) from None


def require_tokenizer(model_dir: Path) -> Path:
    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file() and not (model_dir / "tokenizer.model").is_file():
        raise UsageError(f"{model_dir}: missing tokenizer.json (export needs the tokenizer saved with the model)")
    return tokenizer_file


def tokenizer_json(model_dir: Path) -> dict | None:
    """tokenizer.json, parsed (None when the model has only tokenizer.model); a file that is not JSON is refused."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc}); save the tokenizer with the model again") from None


def unloadable(model_dir: Path, exc: Exception) -> UsageError:
    return UsageError(f"{model_dir}: transformers cannot load the tokenizer ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); export needs the tokenizer saved with "
                      "the model")


def effective_tokenizer_json(hf_tokenizer, tokenizer_file: Path) -> dict | None:
    """The tokenizer transformers really runs. In transformers 5 a model-specific class (e.g. Qwen2Tokenizer,
    chosen from config.json's model_type) installs its own pre-tokenizer instead of the one in tokenizer.json,
    so the file alone can name the wrong one."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return json.loads(backend.to_str())
    return json.loads(tokenizer_file.read_text(encoding="utf-8")) if tokenizer_file.is_file() else None


def probe_tokenizer(model_dir: Path) -> tuple[object, dict | None]:
    """(tokenizer, effective tokenizer.json). The tokenizer is transformers' own, exact on the probe texts (and the
    SPECIAL_TEXTS special_adds and TokenExpectations tokenize); for a BPE model it holds only the part of the
    vocabulary those texts reach (light_tokenizer.load_for_texts: a 152k vocabulary costs ~170 MiB at its peak
    loaded whole). The json is the tokenizer transformers really runs (effective_tokenizer_json): the class's
    pipeline with the file's whole vocabulary and merges."""
    from qlora_kit.gguf.vocab.expectations import probe_texts
    from qlora_kit.gguf.vocab.light_tokenizer import load_for_texts, reducible

    tokenizer_file = model_dir / "tokenizer.json"
    data = tokenizer_json(model_dir)
    loaded = None
    if reducible(model_dir, data):
        try:
            loaded = load_for_texts(model_dir, data, lambda tok: probe_texts(tok) + list(SPECIAL_TEXTS))
        except Exception as exc:  # noqa: BLE001 - the cut is an economy: the whole load below is the answer
            logging.getLogger(__name__).debug("cut tokenizer not loaded (%s: %s); loading it whole",
                                              type(exc).__name__, exc)
    if loaded is None:  # the full tokenizer; read back from it, as it runs (the parsed file is not kept beside it)
        del data
        hf = load_hf_tokenizer(model_dir)
        return hf, effective_tokenizer_json(hf, tokenizer_file)
    effective = json.loads(loaded[0].backend_tokenizer.to_str())
    effective["model"]["vocab"], effective["model"]["merges"] = data["model"]["vocab"], data["model"]["merges"]
    return _Checked(*loaded), effective


class _Checked:
    """A reduced tokenizer answers only for the texts it was cut for: anything else is a bug here, not a
    different tokenization."""

    def __init__(self, hf, texts: list[str]):
        self._hf, self._texts = hf, set(texts)

    def __call__(self, text: str, **kwargs):
        if text not in self._texts:
            raise RuntimeError(f"reduced tokenizer asked for a text it was not cut for: {text!r}")
        return self._hf(text, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._hf, name)


def _is_byte_level(data: dict) -> bool:
    text = json.dumps([data.get("pre_tokenizer"), data.get("decoder")])
    return '"ByteLevel"' in text


def bpe_candidates(model_dir: Path, data: dict) -> list[VocabPlan]:
    import gguf

    model = data["model"]
    by_id: dict[int, str] = {i: t for t, i in model.get("vocab", {}).items()}
    kinds: dict[int, int] = {i: NORMAL for i in by_id}
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    size = max(by_id, default=-1) + 1
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [kinds.get(i, UNUSED) for i in range(size)]
    merges = _merges(data) or gguf.SpecialVocab(model_dir, load_merges=True).merges  # else merges.txt
    if not merges:
        return []
    from qlora_kit.gguf.vocab.gguf_bpe import identify

    identified = identify_pre_tokenizer(data.get("pre_tokenizer"))
    # A tokenizer built from a GGUF (a GGUF base, exported back) carries llama.cpp's own regexes: their names first.
    named = ([identified] if identified else []) + identify(data.get("pre_tokenizer"))
    order = list(dict.fromkeys(named + list(GPT2_PRE_TOKENIZERS)))
    # The candidates differ only in the pre-tokenizer: they share one token list (a 150k vocabulary padded to the
    # embedding is tens of MB per copy; VocabPlan.fit pads and trims in place, the same for all of them).
    return [VocabPlan("gpt2", pre, tokens, types, "tokenizer.json (byte-level BPE)", merges=merges)
            for pre in order]


def _merges(data: dict) -> list[str]:
    """The merge list as gguf's SpecialVocab reads it from tokenizer.json ("left right" strings; pairs written
    by transformers >= 4.45 are joined, a space inside a token encoded as U+0120, as llama.cpp expects), taken
    from the already parsed tokenizer rather than parsing the file a second time (~80 MiB for Qwen's)."""
    merges = (data.get("model") or {}).get("merges") or []
    if merges and isinstance(merges[0], list):
        return [" ".join(part.replace(" ", chr(ord(" ") + 256)) for part in pair) for pair in merges]
    return list(merges)


def candidates(model_dir: Path, data: dict | None, space_prefix_hint: bool) -> list[VocabPlan]:
    """Every GGUF vocabulary that might reproduce this tokenizer, most likely first."""
    from qlora_kit.gguf.vocab import spm_vocab

    plans: list[VocabPlan] = []
    if (model_dir / "tokenizer.model").is_file():  # SentencePiece's own scores: preferred when present
        plans.append(spm_vocab.from_tokenizer_model(model_dir, data))
    elif data is not None:
        kind = (data.get("model") or {}).get("type")
        if kind not in ("BPE", "Unigram"):
            raise UsageError(f"{model_dir / 'tokenizer.json'}: tokenizer type {kind} is not supported for GGUF "
                             f"export; supported: {SUPPORTED}")
        spm = spm_vocab.from_tokenizer_json(data, str(model_dir))
        bpe = bpe_candidates(model_dir, data) if kind == "BPE" else []
        plans = bpe + ([spm] if spm else []) if _is_byte_level(data) else ([spm] if spm else []) + bpe
    spm_plans = [p for p in plans if p.model == "llama"]
    for plan in spm_plans:  # the other space-prefix setting, after everything else
        other = VocabPlan(plan.model, plan.pre, plan.tokens, plan.types, plan.source,  # shared, as above
                          scores=plan.scores, add_space_prefix=not plan.add_space_prefix)
        plans.append(other)
    if spm_plans and not space_prefix_hint:  # the architecture says no prefix (Gemma): try that first
        plans.sort(key=lambda p: p.model == "llama" and p.add_space_prefix is not False)
    if not plans:
        raise UsageError(f"{model_dir}: this tokenizer cannot be written as a GGUF vocabulary; supported: {SUPPORTED}")
    return plans


def llama_cpp_name(model_dir: Path, name: str) -> str:
    """general.name as llama.cpp needs it: it gives special tokens their rstrip flag (swallow the whitespace after
    them, as Phi-3's tokenizer does) only when the name contains "phi3" or "phi-3". A tokenizer whose special tokens
    rstrip gets that suffix, or llama.cpp would tokenize every chat turn differently from training."""
    try:  # transformers writes each added token's flags here (cheaper than parsing tokenizer.json again)
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    added = (config.get("added_tokens_decoder") or {}).values() if isinstance(config, dict) else []
    if not added:  # a tokenizer written by qlora_kit.gguf.vocab.gguf_tokenizer: the flags are in tokenizer.json
        added = (tokenizer_json(model_dir) or {}).get("added_tokens", [])
    rstrip = any(isinstance(t, dict) and t.get("rstrip") and t.get("special") for t in added)
    lowered = name.lower()
    return f"{name}-phi3" if rstrip and "phi3" not in lowered and "phi-3" not in lowered else name


def special_adds(hf_tokenizer) -> dict[str, bool]:
    """Whether the HF tokenizer adds BOS / EOS itself, measured on a text, for tokenizer.ggml.add_bos_token and
    add_eos_token (without them llama.cpp guesses by tokenizer type)."""
    plain = list(hf_tokenizer("Hello", add_special_tokens=False)["input_ids"])
    full = list(hf_tokenizer("Hello", add_special_tokens=True)["input_ids"])
    bos, eos = hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos and full[1:1 + len(plain)] == plain
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos and full[-1 - len(plain):-1] == plain
    return {"bos": add_bos, "eos": add_eos}


def add_vocab(writer, model_dir: Path, vocab_size: int, space_prefix: bool = True, name: str = "model") -> dict:
    """Write tokens, types, merges/scores, special ids, add_bos/add_eos and the chat template; return facts for
    the report."""
    import gc

    import gguf

    from qlora_kit.runtime.compat import release_freed_heap
    from qlora_kit.gguf.vocab.expectations import TokenExpectations
    from qlora_kit.gguf.vocab.tokenizer_probe import choose

    tokenizer_file = require_tokenizer(model_dir)
    hf_tokenizer, data = probe_tokenizer(model_dir)
    expect, adds = TokenExpectations.of(hf_tokenizer, data=data), special_adds(hf_tokenizer)
    # transformers' tokenizer is released before the candidates are built, and each of the rest is built once.
    del hf_tokenizer
    gc.collect()
    # gguf's SpecialVocab warns about post-processor shapes it does not parse; BOS/EOS are measured instead.
    logging.getLogger("gguf").setLevel(logging.ERROR)
    plans = candidates(model_dir, data, space_prefix)
    del data
    for plan in plans:
        plan.fit(vocab_size, str(model_dir))
    plan, probe = choose(plans, expect, name, str(tokenizer_file))
    del plans
    plan.write(writer)
    release_freed_heap()
    special = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=vocab_size)
    special.add_special_token.update(adds)
    special.add_to_gguf(writer, quiet=True)
    facts = {"tokenizer": plan.model if plan.model == "gpt2" else "llama (sentencepiece)",
             "tokenizer_source": plan.source, "pre_tokenizer": plan.pre, "tokens": vocab_size,
             "add_bos": adds["bos"], "add_eos": adds["eos"], "chat_template": bool(special.chat_template),
             "tokenizer_probe": probe}
    if plan.merges:
        facts["merges"] = len(plan.merges)
    if plan.add_space_prefix is not None:
        facts["add_space_prefix"] = plan.add_space_prefix
    return facts
