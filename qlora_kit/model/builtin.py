"""Built-in models, created locally and deterministically (no network): for the demo, tests and benchmarks.

`builtin:tiny-llama` is a 2-layer Llama (hidden 256, so GGUF K-quants apply without fallback) with seeded random
weights and a byte-level BPE tokenizer trained on the shipped tiny chat data (GPT-2 pre-tokenizer, ChatML markers
as special tokens). It is written once into the cache (`$QLORA_KIT_HOME/builtin/`, default ~/.cache/qlora_kit) as
an ordinary 16-bit safetensors checkpoint, so every later stage treats it exactly like a downloaded model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qlora_kit.data.sources import BUILTIN_DATASETS
from qlora_kit.recipe.registry import Registry

PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    version: int  # bump when the builder changes, so stale cached copies are not reused
    build: Callable[[Path], None]
    description: str


BUILTIN_MODELS: Registry = Registry("built-in model")


def register(model: BuiltinModel) -> None:
    BUILTIN_MODELS.add(model.name, model)


def cache_root() -> Path:
    return Path(os.environ.get("QLORA_KIT_HOME") or Path.home() / ".cache" / "qlora_kit")


def is_builtin(name: str) -> bool:
    return name.startswith(PREFIX)


def lookup(name: str) -> BuiltinModel:
    key = name[len(PREFIX):]
    if key not in BUILTIN_MODELS:
        raise KeyError(key)
    return BUILTIN_MODELS[key]


def materialize(name: str) -> Path:
    """Return the directory of a built-in model, building it on first use (atomically: build, then rename)."""
    spec = lookup(name)
    target = cache_root() / "builtin" / f"{spec.name}-v{spec.version}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    try:
        spec.build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def tiny_corpus() -> list[str]:
    import json

    texts = []
    with open(BUILTIN_DATASETS["tiny-chat"], encoding="utf-8") as fh:
        for line in fh:
            for m in json.loads(line)["messages"]:
                texts.append(f"{m['role']}\n{m['content']}")
    return texts


def build_tiny_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # GPT-2's byte-level pre-tokenizer: every byte is representable, and llama.cpp knows this pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tiny_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>", unk_token=None, model_max_length=1024)


def _build_tiny_llama(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False, torch_dtype="float32",
    )
    gen = torch.Generator().manual_seed(1234)
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = LlamaForCausalLM(config)
    # Randomize the norm weights too (HF initializes them to 1), so converters that mishandle norms show up.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


register(BuiltinModel("tiny-llama", 1, _build_tiny_llama,
                      "2-layer Llama, hidden 256, random weights; byte-level BPE tokenizer from the tiny chat data"))
