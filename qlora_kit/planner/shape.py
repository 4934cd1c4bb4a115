"""A model's shape, read from its config.json alone: what the memory planner needs, no weights, no torch.

The config comes from a built-in model, a local directory or (only when the recipe names one) the Hub, where
only config.json is fetched. The decoder layer's Linear layout is a registry keyed by `model_type`: adding an
architecture with another layout is one function plus one registration line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qlora_kit.errors import UsageError, first_line
from qlora_kit.recipe.registry import Registry


@dataclass(frozen=True)
class Linear:
    name: str  # the module's short name (what lora.target_modules lists)
    in_features: int
    out_features: int
    bias: bool = False

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    vocab_size: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied_embeddings: bool
    max_positions: int | None
    layer_linears: tuple[Linear, ...]  # one decoder layer's projections, all quantized to 4-bit
    norm_params_per_layer: int  # RMSNorm/LayerNorm weights in one decoder layer
    final_norm_params: int
    extra_norms: int = 0  # norms on the attention/MLP outputs (Gemma 2/3), beyond the two pre-norms
    qk_norm: bool = False  # per-head norms on q and k (Qwen3, Gemma 3)
    logit_softcap: bool = False  # tanh soft-capping of the final logits (Gemma 2)

    @property
    def fused_qkv(self) -> bool:
        return any(lin.name == "qkv_proj" for lin in self.layer_linears)

    @property
    def linear_params(self) -> int:
        return self.layers * sum(lin.numel for lin in self.layer_linears)

    @property
    def params(self) -> int:
        """Total parameters (embedding, head if untied, linears, norms, biases)."""
        head = 0 if self.tied_embeddings else self.vocab_size * self.hidden
        biases = self.layers * sum(lin.out_features for lin in self.layer_linears if lin.bias)
        return (self.vocab_size * self.hidden + head + self.linear_params + biases
                + self.layers * self.norm_params_per_layer + self.final_norm_params)


LAYOUTS: Registry = Registry("layer layout")


def _llama_like(c: dict, h: int, d: int) -> tuple[Linear, ...]:
    heads, kv, i = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"], \
        c["intermediate_size"]
    # Qwen2 always has q/k/v biases; Llama-style configs say so with attention_bias.
    qkv_bias = c.get("model_type") == "qwen2" or bool(c.get("attention_bias", False))
    o_bias = bool(c.get("attention_bias", False)) and c.get("model_type") != "qwen2"
    mlp_bias = bool(c.get("mlp_bias", False))
    return (Linear("q_proj", h, heads * d, qkv_bias), Linear("k_proj", h, kv * d, qkv_bias),
            Linear("v_proj", h, kv * d, qkv_bias), Linear("o_proj", heads * d, h, o_bias),
            Linear("gate_proj", h, i, mlp_bias), Linear("up_proj", h, i, mlp_bias), Linear("down_proj", i, h, mlp_bias))


def _phi3(c: dict, h: int, d: int) -> tuple[Linear, ...]:
    heads, kv, i = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"], \
        c["intermediate_size"]
    return (Linear("qkv_proj", h, (heads + 2 * kv) * d), Linear("o_proj", heads * d, h),
            Linear("gate_up_proj", h, 2 * i), Linear("down_proj", i, h))


for _name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"):
    LAYOUTS.add(_name, _llama_like)
LAYOUTS.add("phi3", _phi3)

# Norm weights per decoder layer beyond the two pre-norms: Gemma 2/3 also norm after attention and MLP; Qwen3 and
# Gemma 3 norm q and k per head (head_dim weights each).
EXTRA_NORMS = {"gemma2": 2, "gemma3_text": 2}
QK_NORM = {"qwen3", "gemma3_text"}


def shape_from_config(config: dict) -> ModelShape:
    c = config.get("text_config") or config  # multimodal wrappers (Gemma 3) keep the language model here
    model_type = c.get("model_type") or config.get("model_type", "")
    if model_type == "gemma3":
        model_type = "gemma3_text"
    layout = LAYOUTS.get(model_type)
    if layout is None:
        raise UsageError(f"plan: model_type {model_type!r} has no known layer layout; known: {LAYOUTS.choices()}")
    try:
        h, heads = c["hidden_size"], c["num_attention_heads"]
        d = c.get("head_dim") or h // heads
        linears = layout(c, h, d)
        norms = h * (2 + EXTRA_NORMS.get(model_type, 0)) + (2 * d if model_type in QK_NORM else 0)
        # transformers' default for tie_word_embeddings is True; Llama/Mistral/Qwen configs that untie say so.
        return ModelShape(model_type, c["vocab_size"], h, c["num_hidden_layers"], c["intermediate_size"], heads,
                          c.get("num_key_value_heads") or heads, d,
                          bool(config.get("tie_word_embeddings", c.get("tie_word_embeddings", True))),
                          c.get("max_position_embeddings"), linears, norms, h,
                          extra_norms=EXTRA_NORMS.get(model_type, 0), qk_norm=model_type in QK_NORM,
                          logit_softcap=bool(c.get("final_logit_softcapping")))
    except KeyError as exc:
        raise UsageError(f"plan: config.json lacks {exc.args[0]!r}, which the planner needs") from None


def load_config(name: str, revision: str | None = None) -> tuple[dict, str]:
    """config.json of a built-in model, a local directory or a Hub id -> (config, where it came from)."""
    from qlora_kit.model import builtin
    from qlora_kit.model.resolve import check_model_name

    kind = check_model_name(name)
    if kind == "builtin":
        path = builtin.materialize(name) / "config.json"
    elif kind == "local":
        path = Path(name).expanduser() / "config.json"
    elif kind == "gguf":  # dequantized once into the cache, like a built-in
        from qlora_kit.model.resolve import resolve_model_path

        path = Path(resolve_model_path(name)) / "config.json"
    else:
        path = _hub_config(name, revision)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")), str(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the model config ({exc})") from None


def _hub_config(name: str, revision: str | None) -> str:
    from qlora_kit.model.hub import require

    require(name, "model.name", what=f"config.json of {name}")  # not cached, no network: one line at once
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(name, "config.json", revision=revision)
    except Exception as exc:  # offline, gated, unknown repo: all end the same way for the user
        raise UsageError(f"model.name: could not fetch config.json of {name} from the Hub "
                         f"({first_line(exc, type(exc).__name__)}); "
                         "point model.name at a local model directory") from None


