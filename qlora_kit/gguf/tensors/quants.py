"""GGUF types qlora-kit writes, in a registry (light: the recipe schema reads its names without numpy or torch).

F32/F16/BF16/Q8_0 are one type throughout the file; the others are mixtures, a type per tensor as llama.cpp
chooses it (quant_policy.py), encoded by ggml's own quantizer (ggml_quant.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from qlora_kit.errors import UsageError
from qlora_kit.recipe.registry import Registry


@dataclass(frozen=True)
class QuantType:
    name: str
    ggml: str | None  # direct types: the GGML tensor type written by us
    file_type: int  # gguf.LlamaFileType value (general.file_type)
    mixture: bool = False  # K-quants and q4_0: types per tensor by llama.cpp's policy


QUANT_TYPES: Registry = Registry("quantization type")
for _q in (QuantType("f32", "F32", 0), QuantType("f16", "F16", 1), QuantType("bf16", "BF16", 32),
           QuantType("q8_0", "Q8_0", 7), QuantType("q4_0", None, 2, True), QuantType("q2_k", None, 10, True),
           QuantType("q3_k_m", None, 12, True), QuantType("q4_k_m", None, 15, True), QuantType("q5_k_m", None, 17, True),
           QuantType("q6_k", None, 18, True)):
    QUANT_TYPES.add(_q.name, _q)
# llama.cpp refuses these without an importance matrix (imatrix); say so up front instead of failing later.
NEEDS_IMATRIX = {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "q2_k_s"}


def get_quant_type(name: str) -> QuantType:
    key = name.strip().lower()
    if key in NEEDS_IMATRIX:
        raise UsageError(f"--quant {name}: needs an importance matrix (imatrix), which qlora-kit does not compute; "
                         f"choose one of: {QUANT_TYPES.choices()}")
    if key not in QUANT_TYPES:
        raise UsageError(f"--quant {name}: unknown type; choose from: {QUANT_TYPES.choices()}")
    return QUANT_TYPES[key]


