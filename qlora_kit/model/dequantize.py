"""Dequantize one GGUF into a Hugging Face checkpoint directory (run as a child process by gguf_source).

    python -m qlora_kit.model.dequantize FILE.gguf OUT_DIR --dtype bfloat16 [--chat-template chatml]

transformers' GGUF loader does the dequantization, but the model it returns cannot be saved (it keeps a GGUF
`quantization_config`, and `save_pretrained` refuses: "The model is quantized with QuantizationMethod.GGUF and is
not serializable"). So the weights move into a model built from the same config without it, which saves normally.

The tokenizer comes from the GGUF's own vocabulary (qlora_kit.gguf.vocab.gguf_tokenizer): transformers' conversion
splits some SentencePiece vocabularies into single characters and has none for many others. It is used only where
ours is not equal to llama.cpp on the probe set and it is. (transformers builds a byte-level BPE vocabulary as a
hybrid, `byte_fallback: true` under a ByteLevel pre-tokenizer; that flag changes no token but makes the file look
SentencePiece-style to converters, so it is written `false`, as the original hub tokenizer.json has it.)

A bad input (unsupported architecture, a file transformers cannot parse) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qlora_kit.errors import QKError, StageError, UsageError, first_line

NOT_ARCHS = {"general", "tokenizer"}  # metadata sections listed beside the architectures in transformers' table


def dequantize(src: Path, out: Path, dtype_name: str, name: str, chat_template: str | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from qlora_kit.gguf.vocab.gguf_tokenizer import choose as choose_tokenizer
    from qlora_kit.model.gguf_source import read_facts

    facts = read_facts(src, name)
    arch = facts["architecture"]
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UsageError(f"model.name: {name}: transformers cannot dequantize GGUF architecture {arch!r}; it "
                         f"supports: {', '.join(sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - NOT_ARCHS))}")
    dtype = getattr(torch, dtype_name)
    template = None
    if chat_template:
        from qlora_kit.data.templates import get_template

        template = get_template(chat_template).jinja
    tokenizer, tokenizer_facts = choose_tokenizer(src, out, f"model.name: {name}", template,
                                                  lambda: transformers_tokenizer(src, facts["special_ids"], template))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=dtype)
    except (ValueError, KeyError, NotImplementedError) as exc:  # transformers' ways of saying "not this file"
        raise UsageError(f"model.name: {name}: transformers cannot load this GGUF ({arch}): "
                         f"{first_line(exc, type(exc).__name__)}") from None
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
    if (reference_template := tokenizer.chat_template or None) != (template or facts["chat_template"] or None):
        raise StageError(f"the saved tokenizer has another chat template than the GGUF ({reference_template!r:.40})")
    return {"architecture": arch, "model_class": type(model).__name__, **tokenizer_facts}


def transformers_tokenizer(src: Path, special_ids: dict[str, int], template: str | None):
    """transformers' own conversion of the GGUF vocabulary (None where it has none), with the file's special
    tokens and a byte-level BPE's byte_fallback flag normalized (see the module docstring)."""
    import tempfile

    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except Exception:  # noqa: BLE001 - any failure means transformers has no conversion for this vocabulary
        return None
    set_special_tokens(tokenizer, special_ids)
    if template:
        tokenizer.chat_template = template
    with tempfile.TemporaryDirectory(prefix="qlora-kit-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        normalize_tokenizer_json(Path(tmp) / "tokenizer.json")
        return AutoTokenizer.from_pretrained(tmp)


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
