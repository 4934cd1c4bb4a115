"""GGUF architectures, in a registry keyed by the HF `architectures[0]` class name.

Each entry says which llama.cpp architecture to write, which metadata keys it needs, and how tensors change on
the way (facts verified against llama.cpp as bundled in llama-cpp-python 0.3.36; see shared/design/gguf-export.md).
Adding an architecture is one `Arch` plus one `ARCHS.add` line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from qlora_kit.recipe.registry import Registry


@dataclass(frozen=True)
class Arch:
    gguf_arch: str  # llama.cpp's architecture name (general.architecture)
    permute_qk: bool = False  # HF Llama stores Q/K permuted for rotate_half RoPE; llama.cpp's llama uses pairs
    norm_shift: float = 0.0  # Gemma's RMSNorm computes x * (1 + w); llama.cpp's computes x * w
    space_prefix: bool = True  # SentencePiece: prepend a space before the text (Gemma's tokenizer does not)
    extra_kv: Callable[[object, dict], None] | None = None
    extra_tensors: Callable[[dict], dict[str, np.ndarray]] = field(default=lambda config: {})


ARCHS: Registry = Registry("architecture")


def rope(config: dict) -> tuple[float, dict]:
    """(rope theta, scaling dict). transformers 5 saves `rope_parameters` (theta inside it); configs written by
    transformers 4, as most Hub checkpoints are, have `rope_theta` and `rope_scaling`. Read both."""
    params = config.get("rope_parameters") or {}
    params = params.get("full_attention", params)  # Gemma 3 keeps one entry per layer type
    scaling = config.get("rope_scaling") or params
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    return float(theta), scaling if (scaling.get("rope_type") or scaling.get("type")) not in (None, "default") else {}


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def common_kv(writer, config: dict, arch: str) -> None:
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    theta, scaling = rope(config)
    writer.add_rope_freq_base(theta)
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


def _llama_kv(writer, config: dict) -> None:
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim(config))


def llama3_rope_factors(config: dict) -> dict[str, np.ndarray]:
    """Llama 3.1/3.2 ('llama3' rope type): per-frequency scaling factors, written as rope_freqs.weight."""
    base, scaling = rope(config)
    if (scaling.get("rope_type") or scaling.get("type")) != "llama3":
        return {}
    dim = head_dim(config)
    factor = float(scaling["factor"])
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings", 8192))
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < old_context / high:
            factors.append(1.0)
        elif wavelen > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return {"rope_freqs.weight": np.asarray(factors, dtype=np.float32)}


def permute_for_llama_cpp(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo HF's rotate_half layout of Q/K rows so llama.cpp's pairwise RoPE sees the same rotation."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


ARCHS.add("LlamaForCausalLM", Arch("llama", permute_qk=True, extra_kv=_llama_kv, extra_tensors=llama3_rope_factors))
ARCHS.add("MistralForCausalLM", Arch("llama", permute_qk=True, extra_kv=_llama_kv))
ARCHS.add("Qwen2ForCausalLM", Arch("qwen2"))  # NEOX RoPE = rotate_half: no permute; q/k/v biases map by name
ARCHS.add("Qwen3ForCausalLM", Arch("qwen3"))  # q_norm/k_norm map to attn_q_norm/attn_k_norm unchanged


def _gemma2_kv(writer, config: dict) -> None:
    _check_attention_scale(config, "gemma2")
    writer.add_sliding_window(config["sliding_window"])
    if config.get("attn_logit_softcapping"):
        writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))


def _gemma3_kv(writer, config: dict) -> None:
    from qlora_kit.errors import UsageError

    _check_attention_scale(config, "gemma3")
    layer_types = config.get("layer_types")
    expected = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                for i in range(config["num_hidden_layers"])]
    if layer_types and list(layer_types) != expected:
        raise UsageError("gemma3: llama.cpp assumes every 6th layer is global and the rest sliding-window; this "
                         f"model's layer_types differ ({layer_types})")
    local = ((config.get("rope_parameters") or {}).get("sliding_attention") or {}).get("rope_theta")
    writer.add_rope_freq_base_swa(float(local or config.get("rope_local_base_freq", 10000.0)))
    writer.add_sliding_window(config["sliding_window"])
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))


def _check_attention_scale(config: dict, arch: str) -> None:
    """llama.cpp scales Gemma attention by 1/sqrt(head_dim) (hidden/heads for the 27B models), not by
    query_pre_attn_scalar: refuse a model where they differ rather than export wrong attention."""
    from qlora_kit.errors import UsageError

    scalar = config.get("query_pre_attn_scalar")
    allowed = {head_dim(config), config["hidden_size"] // config["num_attention_heads"]}
    if scalar is not None and scalar not in allowed:
        raise UsageError(f"{arch}: query_pre_attn_scalar {scalar} differs from the head size llama.cpp uses "
                         f"({sorted(allowed)}); this model cannot be exported faithfully")


ARCHS.add("Gemma2ForCausalLM", Arch("gemma2", norm_shift=1.0, space_prefix=False, extra_kv=_gemma2_kv))
ARCHS.add("Gemma3ForCausalLM", Arch("gemma3", norm_shift=1.0, space_prefix=False, extra_kv=_gemma3_kv))  # text-only Gemma 3


def _phi3_kv(writer, config: dict) -> None:
    from qlora_kit.errors import UsageError

    _, scaling = rope(config)
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        raise UsageError(f"phi3: RoPE scaling {kind!r} (the long-context Phi-3 variants) is not supported for export "
                         "yet")
    params = config.get("rope_parameters") or {}
    factor = params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    writer.add_rope_dimension_count(int(head_dim(config) * factor))
    # As llama.cpp's converter writes them: the original context, and a sliding window of 0 when there is none.
    writer.add_rope_scaling_orig_ctx_len(int(config.get("original_max_position_embeddings")
                                             or config.get("max_position_embeddings", 4096)))
    writer.add_sliding_window(int(config.get("sliding_window") or 0))


# Fused qkv_proj / gate_up_proj map to attn_qkv / ffn_up as they are; NEOX RoPE, so no permute.
ARCHS.add("Phi3ForCausalLM", Arch("phi3", extra_kv=_phi3_kv))
