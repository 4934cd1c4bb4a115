"""llama.cpp's choice of GGML type for each tensor of a K-quant (or Q4_0) file.

A "Q4_K_M" file is a mixture: the output matrix in Q6_K, attn_v and ffn_down in Q6_K for a third of the layers,
the rest Q4_K, and other types where a row is not a whole number of 256-value blocks. This is
`llama_tensor_get_type` from src/llama-quant.cpp of the llama.cpp that llama-cpp-python 0.3.36 bundles, ported for
the file types qlora-kit writes (QUANT_TYPES) and the dense architectures it exports (no experts, no imatrix, no
user overrides). tests/test_export_kquant.py compares every tensor with `llama_model_quantize`'s own output, so an
upgrade of llama.cpp that changes the policy fails there instead of producing different files quietly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# general.file_type names -> the type a tensor gets unless the policy says otherwise
DEFAULT = {"q4_0": "Q4_0", "q2_k": "Q2_K", "q3_k_m": "Q3_K", "q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K"}
# A row that is not a whole number of the type's blocks takes a 32-block type instead (tensor_type_fallback).
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
ATTN_V_LIKE = ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")  # the tensors most sensitive to quantization
# 2-D weights llama.cpp never quantizes, among the names our architectures can produce (tensor_allows_quantization)
NEVER = ("_norm.weight", "ffn_gate_inp.weight", "position_embd", "token_types", "attn_rel_b.weight")


def block_size(kind: str) -> int:
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]][0]


def llama_cpp_order(names: list[str]) -> list[str]:
    """The order llama.cpp's quantizer visits tensors (its weight_name_comparer): tensors outside the blocks first,
    then by layer number, by name within a layer. The per-layer choices count tensors in this order."""
    def key(name: str):
        match = re.match(r"blk\.(\d+)\.", name)
        return (int(match.group(1)) if match else -1, name)

    return sorted(names, key=key)


def allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    """2-D (or more) weights, except norms and the few tables llama.cpp keeps as they are. `shape` is HF order
    (rows first); ggml counts dimensions from the row width and drops trailing ones of size 1."""
    return (any(d != 1 for d in shape[:-1]) and name.endswith("weight")
            and not any(part in name for part in NEVER))


def category(name: str) -> str:
    if name in ("output.weight", "token_embd.weight"):
        return name.split(".")[0]
    for part in ("attn_qkv", "attn_kv_b", "attn_v", "attn_k", "attn_q", "attn_output"):
        if f"{part}.weight" in name:
            return part
    for part in ("ffn_up", "ffn_gate", "ffn_down"):
        if part in name:
            return part
    return "other"


@dataclass
class _State:
    quant: str
    layers: int
    gqa: int
    is_70b: bool
    tied: bool  # no output.weight: the token embedding doubles as the output matrix
    n_attention_wv: int
    i_attention_wv: int = 0
    i_ffn_down: int = 0


def tensor_types(tensors: dict[str, tuple[int, ...]], quant: str, arch: str, config: dict) -> dict[str, str]:
    """{GGUF name: GGML type} for every tensor llama.cpp quantizes in a `quant` file; the others keep the type they
    were converted to. `tensors` maps GGUF names to HF-order shapes."""
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    layers = config["num_hidden_layers"]
    state = _State(quant, layers, heads // kv_heads if kv_heads else 0,
                   # llama.cpp's model type, the one size its policy names (models/llama.cpp, models/qwen2.cpp)
                   layers == 80 and (arch == "qwen2" or (arch == "llama" and heads != kv_heads)),
                   "output.weight" not in tensors,
                   sum(category(n) in ("attn_v", "attn_qkv", "attn_kv_b") for n in tensors))
    chosen = {}
    for name in llama_cpp_order(list(tensors)):
        shape = tensors[name]
        if allows_quantization(name, shape):
            kind = _mixture(state, DEFAULT[quant], name, shape[-1])
            chosen[name] = _fallback(kind, shape[-1])
    return chosen


def _more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _mixture(s: _State, kind: str, name: str, row_width: int) -> str:
    """llama_tensor_get_type_impl, the branches our file types reach (Falcon, experts and IQ types left out)."""
    cat = category(name)
    if cat == "output" or (s.tied and cat == "token_embd"):
        return "Q8_0" if row_width % block_size(kind) else (kind if kind == "Q8_0" else "Q6_K")
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
        if s.quant == "q2_k":
            kind = "Q4_K" if s.gqa >= 4 else "Q3_K"
        elif s.quant == "q3_k_m":
            kind = "Q5_K" if s.i_attention_wv < 2 else "Q4_K"
        elif s.quant in ("q4_k_m", "q5_k_m") and _more_bits(s.i_attention_wv, s.n_attention_wv):
            kind = "Q6_K"
        if s.is_70b and kind in ("Q3_K", "Q4_K"):  # 8 heads share attn_v there: more bits cost little
            kind = "Q5_K"
        s.i_attention_wv += 1
    elif cat == "ffn_down":
        i_layer = s.i_ffn_down  # counted in llama.cpp's visiting order, as it does for dense models
        if s.quant == "q2_k":
            kind = "Q3_K"
        elif s.quant == "q3_k_m":
            kind = "Q5_K" if i_layer < s.layers // 16 else "Q4_K"
        elif s.quant in ("q4_k_m", "q5_k_m") and _more_bits(i_layer, s.layers):
            kind = "Q6_K"
        s.i_ffn_down += 1
    elif cat == "attn_output":
        kind = {"q2_k": "Q3_K", "q3_k_m": "Q4_K"}.get(s.quant, kind)
    return kind


def _fallback(kind: str, row_width: int) -> str:
    if row_width % block_size(kind) == 0:
        return kind
    kind = FALLBACK.get(kind, kind)
    return kind if row_width % block_size(kind) == 0 else "F16"
