"""Training backends, in a registry: how a base model is loaded in 4-bit and given LoRA adapters.

- `unsloth`: Unsloth's FastLanguageModel (its CUDA kernels are the point; on CPU it runs its CPU fallback).
- `hf`: transformers + bitsandbytes + peft, nothing else: the benchmark baseline, and the fallback for
  architectures Unsloth does not support.

`import unsloth` patches transformers, TRL and peft globally, so it must come first and must never happen in a
process that runs the `hf` baseline: `prepare()` is called before anything imports transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from qlora_kit.runtime.compat import exact_nf4_on_cpu, unsloth_cpu_fp32
from qlora_kit.errors import UsageError
from qlora_kit.model.check import loading
from qlora_kit.recipe.registry import Registry
from qlora_kit.recipe.schema import LoraSection, ModelSection

if TYPE_CHECKING:
    from qlora_kit.training.auto import Runtime

# Module names never adapted by 'all-linear': the output head (and embeddings, which are not Linear anyway).
EXCLUDED_LINEAR = {"lm_head", "embed_out", "output"}
# Named explicitly in target_modules, these are trained in full (not with LoRA), as Unsloth does.
FULLY_TRAINED = {"embed_tokens", "lm_head"}


@dataclass(frozen=True)
class Backend:
    name: str
    prepare: Callable[[ModelSection], None]  # runs before transformers is imported
    load: Callable[[str, ModelSection, LoraSection, Runtime], tuple]  # -> (peft model, tokenizer)
    description: str


BACKENDS: Registry = Registry("backend")


def register(backend: Backend) -> None:
    BACKENDS.add(backend.name, backend)


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UsageError(f"model.backend: unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def linear_module_names(model) -> list[str]:
    """Short names of every Linear-like module (including bitsandbytes Linear4bit) except the output head."""
    import torch

    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):  # bnb Linear4bit/Linear8bitLt subclass nn.Linear
            short = full_name.rsplit(".", 1)[-1]
            if short not in EXCLUDED_LINEAR:
                names.add(short)
    return sorted(names)


def target_modules(model, lora: LoraSection) -> list[str]:
    if lora.target_modules == "all-linear":
        return linear_module_names(model)
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in present]
    if missing:
        raise UsageError(f"lora.target_modules: {', '.join(missing)} not found in the model; it has: "
                         f"{', '.join(linear_module_names(model))} (or use 'all-linear')")
    return list(lora.target_modules)


def quantization_summary(model) -> dict:
    """What the loaded base actually is (recorded in run.json): 4-bit layer count, quant type, double quant."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return {"linear4bit_modules": 0}
    states = [m.weight.quant_state for m in model.modules() if isinstance(m, Linear4bit)]
    return {
        "linear4bit_modules": len(states),
        "quant_type": sorted({s.quant_type for s in states if s is not None}),
        "double_quant": sorted({bool(s.nested) for s in states if s is not None}),
    }


# --- unsloth -------------------------------------------------------------------------------------------------

def _prepare_unsloth(cfg: ModelSection) -> None:
    unsloth_cpu_fp32(cfg.dtype)
    try:
        import unsloth  # noqa: F401  (must precede transformers/trl/peft: it patches them)
    except ImportError as exc:
        raise UsageError(f"model.backend: unsloth is not installed ({exc}); install it with `make install` (CPU) "
                         "or `pip install 'qlora-kit[unsloth]'` (GPU), or set model.backend: hf") from None


def _load_unsloth(path: str, cfg: ModelSection, lora: LoraSection, rt: Runtime):
    from unsloth import FastLanguageModel

    with loading(path):
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=cfg.max_seq_length, load_in_4bit=cfg.load_in_4bit, dtype=rt.torch_dtype,
            trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
            # Several processes on one machine: each loads onto its own GPU (Unsloth's default fills GPU 0 first).
            **({"device_map": rt.device_map} if rt.strategy != "none" else {}),
        )
    model = FastLanguageModel.get_peft_model(
        model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
        target_modules=target_modules(model, lora), use_rslora=lora.rslora, random_state=rt.seed,
        use_gradient_checkpointing="unsloth" if rt.gradient_checkpointing else False,
    )
    return model, tokenizer


# --- hf ------------------------------------------------------------------------------------------------------

def _prepare_hf(cfg: ModelSection) -> None:
    import transformers  # noqa: F401


def _load_hf(path: str, cfg: ModelSection, lora: LoraSection, rt: Runtime):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quant = None
    if cfg.load_in_4bit:
        # FSDP shards every parameter of a wrapped layer as one dtype: the packed 4-bit weights are then stored
        # in the compute dtype (bnb_4bit_quant_storage) instead of uint8, the layout FSDP-QLoRA needs.
        storage = {"bnb_4bit_quant_storage": rt.torch_dtype} if rt.strategy == "fsdp" else {}
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=rt.torch_dtype, **storage)
    with loading(path):
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quant, dtype=rt.torch_dtype, device_map=rt.device_map,
            trust_remote_code=cfg.trust_remote_code, revision=cfg.revision,
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code,
                                                  revision=cfg.revision)
    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=rt.gradient_checkpointing)
        exact_nf4_on_cpu(model)
    elif rt.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    torch.manual_seed(rt.seed)  # LoRA A matrices are initialized randomly
    targets = target_modules(model, lora)
    # Like Unsloth, embeddings and the output head named in target_modules are trained in full (peft's
    # modules_to_save) rather than with LoRA: TRL computes the loss from lm_head.weight directly, so a LoRA on
    # the head would never train, and the merge treats both backends' adapters the same way.
    full = [t for t in targets if t in FULLY_TRAINED]
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                        target_modules=[t for t in targets if t not in FULLY_TRAINED], modules_to_save=full or None,
                        use_rslora=lora.rslora, task_type="CAUSAL_LM")
    return get_peft_model(model, config), tokenizer


register(Backend("unsloth", _prepare_unsloth, _load_unsloth, "Unsloth FastLanguageModel (default)"))
register(Backend("hf", _prepare_hf, _load_hf, "transformers + bitsandbytes + peft (baseline, fallback)"))
