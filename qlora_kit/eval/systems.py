"""The systems compared, in a registry: how each one answers a prompt (greedy) and scores a reference (loss).

- base: the run's base model in 4-bit NF4, as training saw it, with the adapter switched off; zero-shot.
- fewshot: the same model with k training examples in the prompt (the prompt-engineering alternative).
- adapter: base + the LoRA adapter (peft on the same 4-bit model: one load serves these three).
- merged: RUN_DIR/merged in plain transformers. gguf:TYPE: RUN_DIR/gguf/NAME-TYPE.gguf through llama-cpp-python.
Everything takes and returns token ids of the run's tokenizer (the GGUF export verified llama.cpp's to be equal).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qlora_kit.errors import UsageError

KINDS = ("base", "fewshot", "adapter", "merged", "gguf")


@dataclass
class Answer:
    ids: list[int]
    seconds: float


class HFSystem:
    """A transformers model; `adapter=False` runs a peft model with its adapter disabled (the base)."""

    def __init__(self, model, adapter: bool = True):
        self.model, self.adapter = model, adapter

    def _ctx(self):
        import contextlib

        return contextlib.nullcontext() if self.adapter or not hasattr(self.model, "disable_adapter") \
            else self.model.disable_adapter()

    def generate(self, prompt: list[int], max_new: int, stop: set[int]) -> Answer:
        import torch

        t0 = time.perf_counter()
        with torch.no_grad(), self._ctx():
            out = self.model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                      dtype=torch.long), max_new_tokens=max_new, do_sample=False,
                                      eos_token_id=sorted(stop), pad_token_id=min(stop))
        return Answer(_until_stop(out[0, len(prompt):].tolist(), stop), time.perf_counter() - t0)

    def nll(self, prompt: list[int], answer: list[int]) -> float:
        import torch

        from qlora_kit.logits import log_probs

        with torch.no_grad(), self._ctx():
            logits = self.model(input_ids=torch.tensor([prompt + answer])).logits[0]
        return _nll(log_probs(logits), prompt, answer)

    def close(self) -> None:
        del self.model


class GGUFSystem:
    def __init__(self, path: Path, n_ctx: int):
        from qlora_kit.native.loader import load

        self.path = path
        # logits_all: the loss needs every position's distribution, as the export check reads them.
        self.llm = load(path, "evaluating", n_ctx=n_ctx, logits_all=True, n_gpu_layers=-1, seed=0)

    def generate(self, prompt: list[int], max_new: int, stop: set[int]) -> Answer:
        from qlora_kit.native.loader import captured_native_output

        t0, ids = time.perf_counter(), []
        with captured_native_output():
            self.llm.reset()
            for token in self.llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
                if token in stop or len(ids) >= max_new:
                    break
                ids.append(int(token))
        return Answer(ids, time.perf_counter() - t0)

    def nll(self, prompt: list[int], answer: list[int]) -> float:
        from qlora_kit.native.loader import captured_native_output

        with captured_native_output():
            self.llm.reset()
            self.llm.eval(prompt + answer)
            scores = np.array(self.llm.scores[: len(prompt) + len(answer)], dtype=np.float32)
        from qlora_kit.logits import log_probs

        return _nll(log_probs(scores), prompt, answer)

    def close(self) -> None:
        self.llm.close()


def _nll(logp: np.ndarray, prompt: list[int], answer: list[int]) -> float:
    """Summed negative log-likelihood of the answer tokens given everything before them."""
    start = len(prompt)
    return float(-sum(logp[start + i - 1, tok] for i, tok in enumerate(answer)))


def _until_stop(ids: list[int], stop: set[int]) -> list[int]:
    for i, tok in enumerate(ids):
        if tok in stop:
            return ids[:i]
    return ids


def parse_systems(spec: str | list[str]) -> list[str]:
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    for name in names:
        kind = name.split(":", 1)[0]
        if kind not in KINDS or (kind == "gguf") != (":" in name):
            raise UsageError(f"--systems: unknown system {name!r}; choose from base, fewshot, adapter, merged, "
                             "gguf:TYPE (e.g. gguf:q4_k_m)")
    if not names:
        raise UsageError("--systems: name at least one system, e.g. --systems base,fewshot,adapter")
    return list(dict.fromkeys(names))


def gguf_path(run_dir: Path, quant: str) -> Path:
    from qlora_kit.export.quants import get_quant_type

    q = get_quant_type(quant).name
    path = run_dir / "gguf" / f"{run_dir.name}-{q}.gguf"
    if not path.is_file():
        raise UsageError(f"--systems gguf:{q}: {path} does not exist; make it with: qlora-kit export {run_dir} "
                         f"--quant {q}")
    return path


def merged_dir(run_dir: Path) -> Path:
    path = run_dir / "merged"
    if not (path / "config.json").is_file():
        raise UsageError(f"--systems merged: {path} does not exist; make it with: qlora-kit merge {run_dir}")
    return path
