"""Write a random-weight model for benchmarks, from a named config or explicit sizes (no downloads).

    python benchmarks/make_model.py OUT --preset llama-3.2-1b          # the real architecture's sizes
    python benchmarks/make_model.py OUT --layers 4 --hidden 512 --intermediate 1408 --vocab 32000

The tokenizer is the built-in tiny model's (a benchmark needs one; synthetic rows use only its ids, while the
embedding and head keep the preset's vocabulary size, so logits cost what they cost in the real model).
Weights are seeded random bf16 (fp32 for --dtype float32), written as safetensors.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

PRESETS = {
    # Published configs (vocabulary, sizes, context) of the models the benchmark issue names.
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                         max_position_embeddings=131072, rope_theta=500000.0),
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
                         max_position_embeddings=131072, rope_theta=500000.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1408)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--device", default="cpu", help="where to initialize (cuda is much faster for 8B)")
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from qlora_kit.model.builtin import materialize

    sizes = PRESETS[args.preset] if args.preset else dict(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 128,
        tie_word_embeddings=False, max_position_embeddings=args.context)
    tiny = materialize("builtin:tiny-llama")
    config = LlamaConfig(**sizes, bos_token_id=0, eos_token_id=2, pad_token_id=3, torch_dtype=args.dtype)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(getattr(torch, args.dtype))
    model.save_pretrained(args.out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny / name).is_file():
            shutil.copy2(tiny / name, args.out / name)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()):,} parameters ({args.dtype})")


if __name__ == "__main__":
    main()
