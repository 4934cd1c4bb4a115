"""The systems compared, in a registry: how each one answers a prompt (greedy) and scores a reference (loss).

- base: the run's base model in 4-bit NF4, as training saw it, with the adapter switched off; zero-shot.
- fewshot: the same model with k training examples in the prompt (the prompt-engineering alternative).
- adapter: base + the LoRA adapter (peft on the same 4-bit model: one load serves these three).
- reference: a preference run that started from a trained adapter (model.adapter, "SFT then DPO"): the base with
  that starting adapter, the model its training measured itself against (a second adapter on the same load).
- merged: RUN_DIR/merged in plain transformers. gguf:TYPE: RUN_DIR/gguf/NAME-TYPE.gguf through llama-cpp-python.
- recorded:FILE: answers recorded from another model (the hosted one being retired); nothing runs (eval/recorded.py).
Everything takes and returns token ids of the run's tokenizer (the GGUF export verified llama.cpp's to be equal).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path




@dataclass
class Answer:
    ids: list[int]
    seconds: float


class HFSystem:
    """A transformers model. With peft, `adapter` names the adapter that answers ("default": the run's; another name:
    one loaded beside it, such as the reference); None runs the model with its adapters disabled (the base)."""

    def __init__(self, model, adapter: str | None = "default"):
        self.model, self.adapter = model, adapter

    @contextlib.contextmanager
    def _ctx(self):
        if not hasattr(self.model, "disable_adapter"):  # a plain model (merged)
            yield
        elif self.adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            active = self.model.active_adapter
            self.model.set_adapter(self.adapter)
            try:
                yield
            finally:
                self.model.set_adapter(active)

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

        with torch.no_grad(), self._ctx():
            logits = self.model(input_ids=torch.tensor([prompt + answer])).logits[0]
        return answer_nll(logits, len(prompt), answer)

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
        return answer_nll(self.llm.scores, len(prompt), answer)

    def close(self) -> None:
        self.llm.close()


def answer_nll(logits, start: int, answer: list[int]) -> float:
    """Summed negative log-likelihood (nats) of the answer tokens, which begin at position `start`, given everything
    before them; `logits` [tokens, vocab] from torch or llama.cpp. Only the rows that predict an answer token are
    normalized (position t predicts token t + 1): a long prompt's full-vocabulary log-softmax is never held."""
    from qlora_kit.model.logits import log_probs

    logp = log_probs(logits[start - 1: start - 1 + len(answer)])
    return float(-logp[list(range(len(answer))), answer].astype("float64").sum())


def open_system(name: str, run, recipe, status: dict, paths: dict, n_ctx: int, shared: dict):
    """The system `name` ready to answer. base, fewshot, adapter and reference share one 4-bit peft model, kept in
    `shared` (the caller closes only merged and GGUF systems)."""
    kind = name.split(":", 1)[0]
    if kind in ("base", "fewshot", "adapter", "reference"):
        model = shared.get("peft") or shared.setdefault("peft", _peft_model(run, recipe, status))
        if kind == "reference" and "reference" not in model.peft_config:
            model.load_adapter(str(paths["reference"]), adapter_name="reference")
        return HFSystem(model, {"adapter": "default", "reference": "reference"}.get(kind))
    if kind == "merged":
        from qlora_kit.merging.fidelity import plain_model

        return HFSystem(plain_model(str(paths["merged"]), model_dtype(recipe)))
    return GGUFSystem(paths[name], n_ctx)


def model_dtype(recipe):
    import torch

    return getattr(torch, recipe.model.dtype if recipe.model.dtype != "auto" else "float32")


def _peft_model(run, recipe, status):
    from qlora_kit.merging.checkpoint import Checkpoint
    from qlora_kit.merging.fidelity import reference_model
    from qlora_kit.merging.run import base_model_dir

    ckpt = Checkpoint(base_model_dir(status.get("base_model") or recipe.model.name, recipe.model.revision))
    return reference_model(str(ckpt.path), str(run.adapter), model_dtype(recipe), ckpt.prequantized)


def _until_stop(ids: list[int], stop: set[int]) -> list[int]:
    for i, tok in enumerate(ids):
        if tok in stop:
            return ids[:i]
    return ids
