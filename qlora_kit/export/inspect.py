"""Read back what a GGUF file holds: tensor types, and which tensors K-quants could not use."""

from __future__ import annotations

from pathlib import Path

K_QUANTS = {"q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k"}


def tensor_types(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    counts: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def fallbacks(path: Path, quant: str) -> list[dict]:
    """K-quant super-blocks span 256 values of a row: llama.cpp stores tensors whose rows are not a multiple of
    256 wide in another type (Q5_0, Q5_1, Q8_0 or F16). List them, so a user sees why a file is bigger."""
    if quant not in K_QUANTS:
        return []
    from gguf import GGUFReader

    return [{"tensor": t.name, "row_width": int(t.shape[0]), "type": t.tensor_type.name}
            for t in GGUFReader(str(path)).tensors if len(t.shape) >= 2 and int(t.shape[0]) % 256]
