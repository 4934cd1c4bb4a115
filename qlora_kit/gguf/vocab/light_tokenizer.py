"""transformers' tokenizer for a model directory, loaded without the parts of its vocabulary a task cannot reach.

A 150k-token tokenizer costs ~170 MiB at its peak to load in transformers (tokenizer.json parsed in Python, then
built again in Rust), and most of that stays with the process (freed Python objects are not all returned to the
OS). Export needs two things from it, neither of which needs the whole vocabulary:

- its *settings* (which pre-tokenizer transformers installs, the chat template, the eos text): none depends on the
  vocabulary, because transformers picks the tokenizer class and its pipeline from the config files and the class's
  own code. `load_without_vocabulary` loads the same files from a scratch directory whose tokenizer.json has an
  empty vocabulary.
- its *ids on a few known texts* (the probe texts llama.cpp must reproduce). `load_for_texts` loads the same files
  with the BPE vocabulary and merges cut to what those texts can reach. BPE works inside one pre-tokenized piece at
  a time and only ever merges two adjacent symbols of it, so every merge that fires produces a substring of a piece,
  and every token it emits is one: keeping the tokens and merges whose text is a substring of some piece (plus the
  added/special tokens, the unknown token and the byte-fallback tokens) gives the same ids on those texts. The
  pieces come from the class's own normalizer and pre-tokenizer (taken from the vocabulary-less load), applied to
  each text and to each stretch between its added tokens, as transformers splits them. Token ids are kept as they
  are; added tokens get their ids from the vocabulary (transformers numbers the ones it does not find there after
  the vocabulary's size, which a cut vocabulary would change).

The one setting that does depend on the vocabulary size is transformers' Mistral regex fix (applied only above
100k tokens, and only when `fix_mistral_regex` is set): with that flag present the real files are loaded, as they
are for anything but a plain BPE model (Unigram needs its pieces to load, and numbers them by position).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

SETTINGS_FILES = ("tokenizer_config.json", "config.json", "special_tokens_map.json", "added_tokens.json",
                  "chat_template.jinja", "chat_template.json")
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def load_without_vocabulary(model_dir: Path, data: dict | None = None):
    """AutoTokenizer for `model_dir` with an empty vocabulary (`data`: tokenizer.json already parsed, if at hand)."""
    from transformers import AutoTokenizer

    return _load_reduced(Path(model_dir), data, {}, [], []) or AutoTokenizer.from_pretrained(model_dir)


def reducible(model_dir: Path, data: dict | None) -> bool:
    """Whether load_for_texts can cut this tokenizer: a plain BPE model in tokenizer.json, no Mistral regex fix."""
    model = (data or {}).get("model") or {}
    return (model.get("type") == "BPE" and not any(model.get(k) for k in ("continuing_subword_prefix",
                                                                          "end_of_word_suffix", "dropout"))
            and "fix_mistral_regex" not in _config(Path(model_dir)))


def load_for_texts(model_dir: Path, data: dict, texts_of) -> tuple[object, list[str]] | None:
    """(tokenizer, texts): transformers' tokenizer for `model_dir` (`data`: its tokenizer.json, parsed, and
    `reducible`), which gives the full tokenizer's ids on `texts_of(tokenizer)` (a function of the settings: the
    added tokens) but holds only the part of the vocabulary those texts reach; None if transformers cannot load
    it so (load the full tokenizer then)."""
    model_dir = Path(model_dir)
    # The added tokens are kept (numbered from 0 here): the texts are made from them.
    light = _load_reduced(model_dir, data, {}, [], data.get("added_tokens", []))
    backend = getattr(light, "backend_tokenizer", None)
    if backend is None:
        return None
    texts = texts_of(light)
    model = data["model"]
    added = [a["content"] for a in data.get("added_tokens", [])]
    hay = "\0".join(_pieces(backend, texts, added + [t.content for t in light.added_tokens_decoder.values()],
                             model.get("vocab", {})))
    runs = json.loads(backend.to_str())["model"]  # the model the class builds: its unk token, its byte fallback
    keep = set(added) | set(light.all_special_tokens) | {model.get("unk_token"), runs.get("unk_token")}
    byte_fallback = model.get("byte_fallback") or runs.get("byte_fallback")
    vocab = {t: i for t, i in model.get("vocab", {}).items()
             if t in keep or t in hay or (byte_fallback and BYTE_TOKEN.fullmatch(t))}
    for token in data.get("added_tokens", []):  # so transformers finds each added token's id, as in the full file
        vocab.setdefault(token["content"], token["id"])
    merges = [m for m in model.get("merges", []) if (m.replace(" ", "") if isinstance(m, str) else "".join(m)) in hay]
    del light, backend
    reduced = _load_reduced(model_dir, data, vocab, merges, data.get("added_tokens", []))
    if reduced is None or any(vocab.get(t.content) != i for i, t in reduced.added_tokens_decoder.items()):
        return None  # e.g. a token the class adds itself, numbered after the vocabulary's size: load it whole
    return reduced, texts


def _pieces(backend, texts: list[str], added: list[str], vocab: dict) -> list[str]:
    """What the BPE model can be given for these texts: the class's normalizer and pre-tokenizer applied to each
    whole text and to each stretch between added tokens, with and without the whitespace an added token's
    lstrip/rstrip removes next to it; and each piece without its characters that are not in the vocabulary (with
    neither an unknown token nor byte fallback to stand for them BPE drops them, and their neighbours merge)."""
    names = sorted(set(filter(None, added)), key=len, reverse=True)
    splitter = re.compile("|".join(re.escape(a) for a in names)) if names else None
    stretches: set[str] = set()
    for text in texts:
        stretches.add(text)
        for part in (splitter.split(text) if splitter else [text]):
            stretches.update({part, part.lstrip(), part.rstrip(), part.strip()})
    pieces = []
    for stretch in sorted(stretches):
        normalized = backend.normalizer.normalize_str(stretch) if backend.normalizer else stretch
        words = backend.pre_tokenizer.pre_tokenize_str(normalized) if backend.pre_tokenizer else [(normalized, None)]
        for word, _ in words:
            pieces.append(word)
            known = "".join(c for c in word if c in vocab)
            if known != word:
                pieces.append(known)
    return pieces


def _config(model_dir: Path) -> dict:
    config_file = model_dir / "tokenizer_config.json"
    return json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}


def _load_reduced(model_dir: Path, data: dict | None, vocab: dict, merges: list, added: list):
    """AutoTokenizer on the settings files and a tokenizer.json whose vocabulary, merges and added tokens are
    `vocab`, `merges` and `added`; None when transformers cannot load it so or the full files are needed."""
    from transformers import AutoTokenizer

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.is_file() or "fix_mistral_regex" in _config(model_dir):
        return None
    with tempfile.TemporaryDirectory(prefix="qlora-kit-tok-") as tmp:
        for name in SETTINGS_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, Path(tmp) / name)
        data = data if data is not None else json.loads(tokenizer_file.read_text(encoding="utf-8"))
        small = {**data, "model": {**data.get("model", {}), "vocab": vocab, "merges": merges}, "added_tokens": added}
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(small), encoding="utf-8")
        del data, small
        try:
            return AutoTokenizer.from_pretrained(tmp)
        except Exception:  # e.g. a Unigram model, which cannot be built without pieces: the real files, then
            return None
