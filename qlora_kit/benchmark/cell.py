"""One benchmark cell in a process of its own: `python -m qlora_kit.benchmark.cell SPEC.json RESULT.json`.

A fresh process per cell because Unsloth patches transformers globally at import (it must never share a process
with the hf baseline) and because peak memory is a per-process quantity. The cell trains through the same
backend loader and trainer as `qlora-kit train` (SFTTrainer, the method's preference trainer, or GRPOTrainer), on
rows of exactly `seq_len` tokens (bench/rows.py; grpo: prompts, sampled to seq_len, bench/grpo.py), and always
writes RESULT.json: status ok, oom or error. Exit codes: 0 ok, 3 out of memory, 1 anything else.

Timing: each optimizer step is timed between the Trainer's step callbacks (CUDA synchronized); the first
`warmup` steps are excluded from tokens/s. On CPU one extra step runs last under the memory profiler (see
bench.tensors) and is excluded too, as profiling slows it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()  # "time to first step" counts from here: process start, imports and load included

from qlora_kit.benchmark.rows import make_rows, row_tokens
from qlora_kit.errors import EXIT_OOM, first_line, is_oom


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    result = {key: spec[key] for key in ("backend", "seq_len", "batch_size")} | {"method": spec.get("method", "sft")}
    code = 0
    try:
        _limit_memory(spec)
        result.update(run_cell(spec))
        result["status"] = "ok"
    except MemoryError as exc:
        result.update(status="oom", error=first_line(exc, "MemoryError"))
        code = EXIT_OOM
    except Exception as exc:  # noqa: BLE001  (a cell always reports; the sweep goes on)
        text = f"{type(exc).__name__}: {first_line(exc)}"
        oom = is_oom(exc)
        result.update(status="oom" if oom else "error", error=text)
        code = EXIT_OOM if oom else 1
    tmp = Path(argv[1]).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    tmp.replace(argv[1])
    return code


def _limit_memory(spec: dict) -> None:
    """--mem-limit: on CUDA a per-process share of the GPU (applied after load, see run_cell); on CPU the data
    segment limit, which makes an allocation past it fail the way a machine with that much memory would."""
    if spec.get("mem_limit") and spec["device"] == "cpu":
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (spec["mem_limit"], resource.RLIM_INFINITY))


def run_cell(spec: dict) -> dict:
    from qlora_kit.model.backends import get_backend
    from qlora_kit.recipe import load_recipe

    recipe = load_recipe(spec["recipe"], spec["overrides"] + _cell_overrides(spec))
    backend = get_backend(spec["backend"])
    backend.prepare(recipe.model)
    import bitsandbytes  # noqa: F401  (the whole training stack, so both backends' import RSS compare)
    import peft  # noqa: F401
    import torch
    import trl  # noqa: F401

    from qlora_kit.runtime.memory import current_rss_bytes

    import_rss = current_rss_bytes()

    from qlora_kit.model.resolve import resolve_model_path
    from qlora_kit.training.auto import resolve

    resolved, rt = resolve(recipe)
    loaded = time.perf_counter()
    model, tokenizer = backend.load(resolve_model_path(resolved.model.name), resolved.model, resolved.lora, rt)
    load_seconds = time.perf_counter() - loaded
    if rt.device == "cuda" and spec.get("mem_limit"):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["mem_limit"] / total))
    rows = make_rows(spec, resolved, tokenizer)
    timer = make_timer(spec["steps"], profile_last=rt.device == "cpu", cuda=rt.device == "cuda")
    timer.model = model
    return _train(spec, resolved, rt, model, tokenizer, rows, timer) | {
        "import_rss_bytes": import_rss, "load_seconds": round(load_seconds, 3), "device": rt.device,
        "dtype": rt.dtype, "optimizer": resolved.train.optimizer,
        "gradient_checkpointing": bool(resolved.train.gradient_checkpointing),
    }


def _train(spec, resolved, rt, model, tokenizer, rows, timer) -> dict:
    import tempfile

    import torch

    from qlora_kit.benchmark.tensors import held_bytes
    from qlora_kit.runtime.memory import peak_rss_bytes
    from qlora_kit.training.trainer import build_trainer

    grpo = resolved.train.method == "grpo"
    with tempfile.TemporaryDirectory(prefix="qlora-kit-bench-") as tmp:
        trainer = build_trainer(resolved, rt, model, tokenizer, rows, _no_rows(grpo), tmp, [timer], save=False)
        timer.trainer = trainer
        if grpo:
            from qlora_kit.benchmark.grpo import GenerationClock, full_completions

            clock = GenerationClock(trainer)
            full_completions(trainer, resolved.grpo.max_completion_length)
        try:
            trainer.train()
        finally:
            if getattr(trainer, "qk_graders", None) is not None:
                trainer.qk_graders.close()
    measured = timer.durations[spec["warmup"]:len(timer.durations) - (1 if timer.profile_last else 0)]
    out = {
        "steps": len(timer.durations), "measured_steps": len(measured),
        "step_seconds": [round(s, 5) for s in timer.durations],
        "time_to_first_step_seconds": round(timer.first_step_end - STARTED, 3),
        "losses": timer.losses, "final_loss": timer.losses[-1] if timer.losses else None,
        "held": held_bytes(model, trainer.optimizer),
    }
    if grpo:
        from qlora_kit.benchmark.grpo import grpo_figures

        out.update(grpo_figures(spec, measured, clock, timer.profile_last))
    else:
        out.update(_row_figures(spec, rows, measured))
    if rt.device == "cuda":
        out.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                   peak_reserved_bytes=torch.cuda.max_memory_reserved(), gpu=torch.cuda.get_device_name(0))
    else:
        out.update(peak_rss_bytes=peak_rss_bytes(), peak_tensor_bytes=timer.tensor_peak)
    return out


def _no_rows(grpo: bool):
    """No held-out rows: an empty list, or for grpo an empty PromptSplit."""
    if grpo:
        from qlora_kit.data.prompts import PromptSplit

        return PromptSplit()
    return []


def _row_figures(spec: dict, rows: list, measured: list[float]) -> dict:
    # Tokens the steps really ran: seq_len x batch for SFT rows; a pair runs its prompt once per answer.
    tokens_per_step = sum(row_tokens(r) for r in rows) / len(rows) * spec["batch_size"]
    return {
        "tokens_per_second": round(tokens_per_step * len(measured) / sum(measured), 2) if measured else None,
        # Share of tokens with a loss (synthetic rows: all; recipe rows: what data.train_on keeps).
        "trained_token_fraction": round(sum(r.trained_tokens for r in rows) / sum(row_tokens(r) for r in rows), 4),
        "rows_per_second": round(spec["batch_size"] * len(measured) / sum(measured), 3) if measured else None,
    }


def _cell_overrides(spec: dict) -> list[str]:
    method = spec.get("method", "sft")
    base = None
    if method == "grpo":  # its grader and group depend on the recipe as given
        from qlora_kit.recipe import load_recipe

        base = load_recipe(spec["recipe"], spec["overrides"])
    return [f"model.backend={spec['backend']}", f"model.max_seq_length={spec['seq_len']}",
            f"train.batch_size={spec['batch_size']}", "train.grad_accum=1", f"train.max_steps={spec['steps']}",
            "train.logging_steps=1", "train.eval_steps=null", f"train.device={spec['device']}",
            *method_overrides(method, base, spec["batch_size"])]


def method_overrides(method: str, base=None, batch_size: int | None = None) -> list[str]:
    """The recipe as `method` trains it: a cell drops the options of the other methods (they would be an error);
    a preference or grpo cell turns packing off (pairs are never packed); a grpo cell of a recipe that is not one
    gets a default grader (bench/grpo.py; `base`: the recipe as given)."""
    if method == "sft":
        return ["train.method=sft", "preference={}", "grpo={}"]
    if method == "grpo":
        from qlora_kit.benchmark.grpo import grpo_overrides

        return grpo_overrides(base, batch_size)
    return [f"train.method={method}", "data.packing=false", "grpo={}"]


def make_timer(steps: int, profile_last: bool, cuda: bool):
    """The step timer is a TrainerCallback, so its class is made only after the backend's import (Unsloth must be
    imported before transformers)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps, self.profile_last, self.cuda = steps, profile_last, cuda
            self.durations: list[float] = []
            self.losses: list[float] = []
            self.first_step_end = self.tensor_peak = None
            self.model = self.trainer = None
            self._t = self._profiler = None
            self._baseline = 0

        def _now(self) -> float:
            if self.cuda:
                import torch

                torch.cuda.synchronize()
            return time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            if self.profile_last and state.global_step == self.steps - 1:
                from qlora_kit.benchmark.tensors import StepPeak, held_bytes

                # Tensors alive now (the profiler sees only what is allocated while it runs); gradients are
                # None between steps, so this is weights, LoRA, optimizer states and buffers.
                self._baseline = sum(held_bytes(self.model, getattr(self.trainer, "optimizer", None)).values())
                self._profiler = StepPeak().__enter__()
            self._t = self._now()

        def on_step_end(self, args, state, control, **kwargs):
            self.durations.append(self._now() - self._t)
            if self.first_step_end is None:
                self.first_step_end = time.perf_counter()
            if self._profiler is not None:
                self._profiler.__exit__(None, None, None)
                self.tensor_peak = self._baseline + self._profiler.peak
                self._profiler = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(round(float(logs["loss"]), 6))

    return StepTimer()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
