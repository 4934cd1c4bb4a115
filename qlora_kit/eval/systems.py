"""The systems compared, in a registry: how each one answers a prompt (greedy) and scores a reference (loss).

- base: the run's base model in 4-bit NF4, as training saw it, with the adapter switched off; zero-shot.
- fewshot: the same model with k training examples in the prompt (the prompt-engineering alternative).
- adapter: base + the LoRA adapter (peft on the same 4-bit model: one load serves these three).
- merged: RUN_DIR/merged in plain transformers. gguf:TYPE: RUN_DIR/gguf/NAME-TYPE.gguf through llama-cpp-python.
- recorded:FILE: answers recorded from another model (the hosted one being retired); nothing runs (eval/recorded.py).
Everything takes and returns token ids of the run's tokenizer (the GGUF export verified llama.cpp's to be equal).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qlora_kit.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

KINDS = ("base", "fewshot", "adapter", "merged", "gguf", "recorded")
WITH_ARGUMENT = ("gguf", "recorded")  # kind:ARGUMENT; the others are bare names


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

        from qlora_kit.model.logits import log_probs

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
        import numpy as np

        from qlora_kit.native.loader import captured_native_output

        with captured_native_output():
            self.llm.reset()
            self.llm.eval(prompt + answer)
            scores = np.array(self.llm.scores[: len(prompt) + len(answer)], dtype=np.float32)
        from qlora_kit.model.logits import log_probs

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


def parse_systems(spec: str | list[str], field: str = "--systems") -> list[str]:
    """Names as given (duplicates dropped); only the names are checked here, not what they point at. `recorded:FILE`
    keeps the path as typed: the report names the system that way. Validate imports this (no numpy, no torch)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    for name in names:
        kind, sep, arg = name.partition(":")
        if kind not in KINDS or (kind in WITH_ARGUMENT) != bool(sep) or (sep and not arg.strip()):
            raise UsageError(f"{field}: unknown system {name!r}; choose from base, fewshot, adapter, merged, "
                             "gguf:TYPE (e.g. gguf:q4_k_m), recorded:FILE (an old model's answers, .jsonl)")
    if not names:
        raise UsageError(f"{field}: name at least one system, e.g. --systems base,fewshot,adapter")
    return list(dict.fromkeys(names))


def gguf_path(run_dir: Path, quant: str) -> Path:
    from qlora_kit.gguf.tensors.quants import get_quant_type

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


def system_problems(names: list[str], field: str = "eval.systems") -> list[str]:
    """What `validate` can tell about eval.systems before the run exists, one line each: unknown names, and
    recorded:FILE files that are missing or malformed (read now: a bad line fails in a second, not after training)."""
    from qlora_kit.errors import QKError
    from qlora_kit.eval.recorded import load_recorded

    try:
        names = parse_systems(names, field)
    except UsageError as exc:
        return [str(exc)]
    problems = []
    for name in (n for n in names if n.startswith("recorded:")):
        try:
            load_recorded(name.split(":", 1)[1], field)
        except QKError as exc:
            problems.append(str(exc) if str(exc).startswith(field) else f"{field} {name}: {exc}")
    return problems
