"""Does the merged model behave like the model that was trained? Measured, not assumed.

Reference: the base loaded in 4-bit NF4 exactly as in training (plain transformers + bitsandbytes, same dtype)
with the LoRA adapter applied by peft. Candidate: the merged checkpoint loaded by plain transformers. On the same
held-out rows: max |delta logit|, mean KL(reference || merged) per token, top-1 agreement, and the held-out loss
(assistant tokens only) of both. Everything is computed in float32 from each model's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qlora_kit.data.encode import Encoded
from qlora_kit.model.logits import compare_logits
from qlora_kit.runtime.compat import exact_nf4_on_cpu


@dataclass
class Comparison:
    max_abs_logit_diff: float
    mean_kl: float
    top1_agreement: float
    loss_reference: float
    loss_candidate: float
    tokens: int

    def as_dict(self) -> dict:
        return {k: round(v, 8) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def reference_model(base_path: str, adapter_dir: str, dtype: torch.dtype, prequantized: bool):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = None if prequantized else BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    base = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=quant, dtype=dtype,
                                                device_map={"": "cpu"})
    exact_nf4_on_cpu(base)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def plain_model(path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map={"": "cpu"}).eval()


@torch.no_grad()
def logits_of(model, rows: list[Encoded]) -> list[torch.Tensor]:
    return [model(input_ids=torch.tensor([r.input_ids])).logits[0].float() for r in rows]


def compare(reference: list[torch.Tensor], candidate: list[torch.Tensor], rows: list[Encoded]) -> Comparison:
    return Comparison(**compare_logits(reference, candidate, [r.labels for r in rows]))
