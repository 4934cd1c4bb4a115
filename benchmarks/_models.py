"""Random models for benchmarks, built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path


def random_llama(out: Path, layers: int, hidden: int, intermediate: int, vocab: int = 32000, tokenizer_from=None):
    """Save a random Llama to `out`; returns the in-memory model (for adapters built on it)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(Path(tokenizer_from) / name, Path(out) / name)
    return model
