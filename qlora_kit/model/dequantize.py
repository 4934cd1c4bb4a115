"""Dequantize one GGUF into a Hugging Face checkpoint directory (run as a child process by gguf_source).

    python -m qlora_kit.model.dequantize FILE.gguf OUT_DIR --dtype bfloat16 [--chat-template chatml]

transformers' GGUF loader does the dequantization, but the model it returns cannot be saved (it keeps a GGUF
`quantization_config`, and `save_pretrained` refuses: "The model is quantized with QuantizationMethod.GGUF and is
not serializable"). So the weights move into a model built from the same config without it, which saves normally.

The tokenizer transformers builds from a GGUF byte-level BPE vocabulary is a hybrid: a BPE model with
`byte_fallback: true` under a ByteLevel pre-tokenizer and decoder. Byte fallback never fires there (the ByteLevel
alphabet covers every byte), so it changes no token, but it makes the file look SentencePiece-style to converters
(ours included). It is written with `byte_fallback: false`, as the original hub tokenizer.json has it, and the
saved tokenizer is checked to encode and decode a set of texts exactly as the GGUF-built one does.

A bad input (unsupported architecture, a file transformers cannot parse) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qlora_kit.errors import QKError, StageError, UsageError, first_line

# Texts the saved tokenizer must treat exactly like the GGUF-built one: digits, whitespace runs, punctuation,
# accents, CJK, emoji, chat markup.
ROUND_TRIP_TEXTS = [
    "Convert to ISO 8601: March 5, 2021", "  leading and trailing spaces  ", "tabs\tand\nnew\n\nlines",
    "1234567890 3.14159 -42", "Ünïcödé façade naïve", "日本語のテキスト", "emoji 🤗🚀", "x = {'a': [1, 2]} // ok?",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]
NOT_ARCHS = {"general", "tokenizer"}  # metadata sections listed beside the architectures in transformers' table


def dequantize(src: Path, out: Path, dtype_name: str, name: str, chat_template: str | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from qlora_kit.model.gguf_source import read_facts

    facts = read_facts(src, name)
    arch = facts["architecture"]
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UsageError(f"model.name: {name}: transformers cannot dequantize GGUF architecture {arch!r}; it "
                         f"supports: {', '.join(sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - NOT_ARCHS))}")
    dtype = getattr(torch, dtype_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=dtype)
    except (ValueError, KeyError, NotImplementedError) as exc:  # transformers' ways of saying "not this file"
        raise UsageError(f"model.name: {name}: transformers cannot load this GGUF ({arch}): "
                         f"{first_line(exc, type(exc).__name__)}") from None
    set_special_tokens(tokenizer, facts["special_ids"])
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    result = model.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in _tied_keys(model)]
    if missing or result.unexpected_keys:
        raise StageError(f"dequantized weights do not fit {type(model).__name__}: missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    if chat_template:
        from qlora_kit.data.templates import get_template

        tokenizer.chat_template = get_template(chat_template).jinja
    tokenizer.save_pretrained(out)
    normalized = normalize_tokenizer_json(out / "tokenizer.json")
    check_round_trip(tokenizer, out)
    return {"architecture": arch, "model_class": type(model).__name__, "byte_fallback_normalized": normalized}


def set_special_tokens(tokenizer, ids: dict[str, int]) -> None:
    """bos/eos/unk/pad as the GGUF names them. transformers 5.17 builds SmolLM2's tokenizer with eos
    '<|im_start|>' although the file says eos id 2 ('<|im_end|>'); the eos text decides where generation stops
    (exported GGUF, Ollama stop strings), so the file's ids win."""
    for attr, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        if key in ids and 0 <= ids[key] < len(tokenizer):
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(ids[key]))


def _tied_keys(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or []
    return set(keys if not isinstance(keys, dict) else keys)


def normalize_tokenizer_json(path: Path) -> bool:
    """byte_fallback: true -> false on a BPE model under a ByteLevel pre-tokenizer (see the module docstring)."""
    if not path.is_file():
        return False
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback") or not _byte_level(data.get("pre_tokenizer")):
        return False
    model["byte_fallback"] = False
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return True


def _byte_level(spec: dict | None) -> bool:
    if not spec:
        return False
    if spec.get("type") == "ByteLevel":
        return True
    return any(p.get("type") == "ByteLevel" for p in spec.get("pretokenizers") or [])


def check_round_trip(reference, out: Path) -> None:
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out)
    for text in ROUND_TRIP_TEXTS:
        want, got = reference.encode(text, add_special_tokens=False), saved.encode(text, add_special_tokens=False)
        if want != got or saved.decode(got) != reference.decode(want):
            raise StageError(f"the saved tokenizer does not round-trip {text!r}: {got[:12]} vs {want[:12]}")
    if (reference.chat_template or None) != (saved.chat_template or None):
        raise StageError("the saved tokenizer lost the chat template")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qlora_kit.model.dequantize")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--name", help="the model.name to quote in error messages")
    p.add_argument("--chat-template", help="install this built-in chat template instead of the GGUF's")
    args = p.parse_args(argv)
    try:
        facts = dequantize(Path(args.src), Path(args.out), args.dtype, args.name or args.src, args.chat_template)
    except QKError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
