"""The tokenizer a GGUF base trains with: built from the GGUF's vocabulary (from_gguf.py), or transformers' own
conversion where that is as good, proven equal to llama.cpp's tokenization of the file on the probe set first.

Why prove it: a tokenizer that splits text differently from llama.cpp trains a model on ids it will never see when it
runs in llama.cpp or Ollama, and nothing fails loudly. The check runs llama.cpp in a child process
(llama_tokens.py), specials parsed, on every probe text (probe_set.py) and the vocabulary's own added tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qlora_kit.errors import UsageError


@dataclass
class Verdict:
    source: str  # "gguf vocabulary (llama)" or "transformers' GGUF conversion"
    texts: int
    equal: int
    first: tuple[str, list[int], list[int]] | None  # (text, llama.cpp ids, HF ids) of the first difference

    def line(self) -> str:
        if self.texts == 0:  # not built: the source says why
            return self.source
        if self.first is None:
            return f"{self.source}: equal on {self.texts} probe texts"
        text, want, got = self.first
        return (f"{self.source}: differs on {self.texts - self.equal} of {self.texts} probe texts, first "
                f"{_short_text(text)}: llama.cpp {_ids(want)}, HF {_ids(got)}")


def probe_texts(hf_tokenizer) -> list[str]:
    from qlora_kit.gguf.vocab.probe_set import added_token_texts, fixed_texts

    added = [t.content for t in hf_tokenizer.added_tokens_decoder.values() if t.content.strip()]
    # The rarest-looking added tokens are as likely to break as the first ones: take both ends.
    return fixed_texts() + added_token_texts(added[:4] + added[-4:])


def judge(hf_tokenizer, gguf_path: Path, source: str, texts: list[str] | None = None) -> Verdict:
    from qlora_kit.gguf.vocab.llama_tokens import tokenize

    texts = texts or probe_texts(hf_tokenizer)
    want = tokenize(gguf_path, texts, special=True)
    got = [list(hf_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    differ = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
    return Verdict(source, len(texts), len(texts) - len(differ), differ[0] if differ else None)


def build(gguf_path: Path, out: Path, where: str, chat_template: str | None = None):
    """Write tokenizer.json + tokenizer_config.json for the GGUF's vocabulary into `out`; return the loaded HF
    tokenizer and what the file says (GgufVocab)."""
    from transformers import AutoTokenizer

    from qlora_kit.gguf.vocab.from_gguf import read_vocab, tokenizer_json

    vocab = read_vocab(gguf_path)
    data = tokenizer_json(vocab, where)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": 1 << 30, "chat_template": chat_template or vocab.chat_template}
    texts = _token_texts(data)
    for attr, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unk"), ("pad_token", "pad"),
                      ("sep_token", "sep"), ("mask_token", "mask")):
        i = vocab.special.get(key)
        if i is not None and i in texts:
            config[attr] = texts[i]
    if not config["chat_template"]:
        del config["chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return AutoTokenizer.from_pretrained(out), vocab


def _token_texts(data: dict) -> dict[int, str]:
    """id -> text, as the tokenizer.json holds it (added tokens win over the model's vocabulary)."""
    vocab = data["model"]["vocab"]
    texts = dict(enumerate(p[0] for p in vocab)) if isinstance(vocab, list) else {i: t for t, i in vocab.items()}
    texts.update({added["id"]: added["content"] for added in data["added_tokens"]})
    return texts


def choose(gguf_path: Path, out: Path, where: str, chat_template: str | None, transformers_tokenizer=None):
    """The first tokenizer equal to llama.cpp on every probe: ours from the GGUF vocabulary, then transformers'
    conversion (`transformers_tokenizer`, a callable loading it, tried only when ours is not equal). Returns
    (tokenizer saved in `out`, facts for the record); a one-line UsageError when neither is equal."""
    verdicts, tokenizer = [], None
    try:
        tokenizer, vocab = build(gguf_path, out, where, chat_template)
        verdicts.append(judge(tokenizer, gguf_path, f"gguf vocabulary ({vocab.model})"))
    except UsageError as exc:
        verdicts.append(Verdict(f"gguf vocabulary: {exc}", 0, 0, None))
        tokenizer = None
    if tokenizer is not None and verdicts[-1].first is None:
        return tokenizer, _facts(verdicts)
    if transformers_tokenizer is not None:
        theirs = transformers_tokenizer()
        if theirs is not None:
            verdicts.append(judge(theirs, gguf_path, "transformers' GGUF conversion"))
            if verdicts[-1].first is None:
                for stale in ("tokenizer.json", "tokenizer_config.json"):
                    (out / stale).unlink(missing_ok=True)
                theirs.save_pretrained(out)
                return theirs, _facts(verdicts)
    raise UsageError(f"{where}: no tokenizer reproduces llama.cpp's tokenization of this GGUF, so training on it "
                     f"would teach ids llama.cpp never produces; " + "; ".join(v.line() for v in verdicts))


def _facts(verdicts: list[Verdict]) -> dict:
    chosen = verdicts[-1]
    return {"tokenizer_source": chosen.source, "probe_texts": chosen.texts,
            "tried": [v.line() for v in verdicts]}


def _short_text(text: str, keep: int = 40) -> str:
    shown = repr(text)
    return shown if len(shown) <= keep else shown[:keep] + "...'"


def _ids(ids: list[int], keep: int = 8) -> str:
    return str(ids) if len(ids) <= keep else f"{str(ids[:keep])[:-1]}, ...] ({len(ids)} ids)"
