"""The bench report: report.json (everything), report.md (tables), and PNG plots.

Which memory number is compared: on CUDA `max_memory_allocated` (what the planner predicts, and what Unsloth's
and everyone's published numbers use); on CPU the process's peak RSS for the backend ratio (what the machine
pays) and the peak of live tensor bytes for the planner (RSS also holds the libraries themselves).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from qlora_kit import __version__

MFU_FORMULA = ("FLOPs per trained token = 4 x N + 12 x L x s x h (N parameters, L layers, s sequence length, h "
               "hidden size): forward 2N, backward to activations 2N (frozen 4-bit weights get no weight "
               "gradient; LoRA's are negligible), attention 4 x L x s x h forward and twice that backward; plus "
               "k x (2N + 4 x L x s x h) for the forwards without backward (k = 1 for dpo's reference, 3 for kto's "
               "KL and reference forwards, 0 for sft, orpo, simpo). "
               "MFU = FLOPs/token x tokens/s / the GPU's dense bf16 peak.")
PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo", "accelerate")
# The CPU features that decide which PyTorch/oneDNN kernels run: two CPUs both named "AMD EPYC" differ 2-3x in
# CPU training speed (AVX2-only Zen 2 against one with AVX512-BF16), so a report says which it ran on.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
# Targets from the benchmark issue: (device, seq_len at least, speed ratio at least, memory ratio at most).
TARGETS = {"cuda": (2048, 2.0, 0.4), "cpu": (0, 1.0, 1.0)}
PLANNER_TOLERANCE = 0.10
# A preference method's cell against sft's: ratio name -> the cell's figure.
METHOD_RATIOS = {"speed": "tokens_per_second", "rows": "rows_per_second", "memory": "peak_bytes",
                 "tensor": "peak_tensor_bytes", "predicted": "predicted_peak_bytes"}


def machine_info(device: str) -> dict:
    info = {"device": device, **_cpu_info(), "cpu_count": os.cpu_count(), "ram_bytes": _ram_bytes(),
            "python": platform.python_version(), "platform": platform.platform(), "qlora_kit": __version__,
            "packages": {}}
    for name in PACKAGES:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info["packages"][name] = None
    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory, cuda=torch.version.cuda)
    return info


def _cpu_info() -> dict:
    """cpu (its model name), cpu_model ("family 23 model 49" on x86 Linux) and cpu_features (those of CPU_FEATURES
    it has), from the first processor's block of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip() and fields:
                break
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    family, model = fields.get("cpu family"), fields.get("model")
    return {"cpu": fields.get("model name") or platform.processor() or "unknown",
            "cpu_model": f"family {family} model {model}" if family and model else platform.machine(),
            "cpu_features": [f for f in CPU_FEATURES if f in fields.get("flags", "").split()]}


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def build_report(sweep, recipe, shape, machine: dict, cells: list[dict]) -> dict:
    """`sweep` is the bench.sweep.Sweep that ran (this module does not import that one: sweep.run calls here)."""
    for cell in cells:
        cell.setdefault("method", "sft")
        _add_measures(cell, sweep.device)
        _add_prediction(cell, sweep, recipe, shape)
        _add_mfu(cell, shape, machine, recipe.preference.precompute_ref_log_probs)
    _add_ratios(cells)
    _add_method_ratios(cells)
    return {
        "schema": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "qlora-kit " + " ".join(sweep.argv), "recipe": sweep.recipe, "model": recipe.model.name,
        "model_shape": {"model_type": shape.model_type, "params": shape.params, "layers": shape.layers,
                        "hidden": shape.hidden, "vocab": shape.vocab_size},
        "machine": machine, "settings": settings(sweep), "mfu_formula": MFU_FORMULA,
        "memory_measures": {"cuda": "torch.cuda.max_memory_allocated (reserved also recorded)",
                            "cpu": "peak RSS (VmHWM) for backend ratios; peak live tensor bytes for the planner"},
        "cells": cells, "targets": evaluate_targets(cells, sweep.device),
    }


def settings(sweep) -> dict:
    """The sweep's fields as the report records them (its dataclass fields, `out` as a string)."""
    out = asdict(sweep)
    out["out"] = str(sweep.out)
    return out


def _add_measures(cell: dict, device: str) -> None:
    if cell["status"] != "ok":
        return
    if device == "cuda":
        cell["peak_bytes"], cell["peak_kind"] = cell["peak_allocated_bytes"], "cuda_max_memory_allocated"
        cell["planner_measured_bytes"] = cell["peak_allocated_bytes"]
    else:
        cell["peak_bytes"], cell["peak_kind"] = cell["peak_rss_bytes"], "cpu_peak_rss"
        cell["planner_measured_bytes"] = cell.get("peak_tensor_bytes")


def _add_prediction(cell: dict, sweep, recipe, shape) -> None:
    from qlora_kit.planner.inputs import plan_input_for
    from qlora_kit.planner.estimate import estimate

    if cell["method"] == "grpo" and cell.get("completion_tokens"):
        # The sequences the step ran (prompt + completion) and its one micro-step a round (grad_accum 1).
        completion = cell["completion_tokens"]
        p = plan_input_for(recipe, shape, cell["backend"], sweep.device, cell["prompt_tokens"] + completion,
                           cell["batch_size"], method="grpo", grad_accum=1)
        p = replace(p, completion_len=completion)
    else:
        p = plan_input_for(recipe, shape, cell["backend"], sweep.device, cell["seq_len"], cell["batch_size"],
                           method=cell["method"], grad_accum=1)
    if cell.get("trained_token_fraction"):  # the LM head scores the answers' tokens only (dpo, kto)
        p = replace(p, scored_share=cell["trained_token_fraction"])
    est = estimate(shape, p)
    cell["predicted_peak_bytes"] = est.peak
    cell["predicted_terms"] = est.terms
    if est.phases:  # grpo: each phase's bytes above the held terms
        cell["predicted_phases"] = est.phases
    measured = cell.get("planner_measured_bytes")
    if measured:
        cell["prediction_error"] = round((est.peak - measured) / measured, 4)


def _add_mfu(cell: dict, shape, machine: dict, precompute_ref: bool) -> None:
    from qlora_kit.planner.gpus import peak_flops_for
    from qlora_kit.planner.methods import no_grad_forwards_per_token

    peak = peak_flops_for(machine.get("gpu"))
    if cell["status"] != "ok" or not peak or not cell.get("tokens_per_second"):
        return
    attention = shape.layers * cell["seq_len"] * shape.hidden
    extra = no_grad_forwards_per_token(cell["method"], precompute_ref)
    per_token = 4 * shape.params + 12 * attention + extra * (2 * shape.params + 4 * attention)
    cell["mfu"] = round(per_token * cell["tokens_per_second"] / peak, 4)


def _add_ratios(cells: list[dict]) -> None:
    baseline = {(c["method"], c["seq_len"], c["batch_size"]): c for c in cells
                if c["backend"] == "hf" and c["status"] == "ok"}
    for cell in cells:
        base = baseline.get((cell["method"], cell["seq_len"], cell["batch_size"]))
        if cell["status"] != "ok" or base is None:
            continue
        cell["speed_ratio_vs_hf"] = round(cell["tokens_per_second"] / base["tokens_per_second"], 3)
        cell["memory_ratio_vs_hf"] = round(cell["peak_bytes"] / base["peak_bytes"], 3)
        if cell.get("peak_tensor_bytes") and base.get("peak_tensor_bytes"):
            cell["tensor_ratio_vs_hf"] = round(cell["peak_tensor_bytes"] / base["peak_tensor_bytes"], 3)
        if cell.get("final_loss") is not None and base.get("final_loss") is not None:
            cell["final_loss_diff_vs_hf"] = round(cell["final_loss"] - base["final_loss"], 6)


def _add_method_ratios(cells: list[dict]) -> None:
    """A preference method against sft on the same backend, sequence length and batch: tokens/s, rows/s, peak
    memory (and tensor peak on CPU), and the planner's predicted ratio beside the measured one."""
    sft = {(c["backend"], c["seq_len"], c["batch_size"]): c for c in cells if c["method"] == "sft"}
    for cell in cells:
        base = sft.get((cell["backend"], cell["seq_len"], cell["batch_size"]))
        if cell["method"] == "sft" or base is None or cell["status"] != "ok" or base["status"] != "ok":
            continue
        for name, key in METHOD_RATIOS.items():
            if cell.get(key) and base.get(key):
                cell[f"{name}_ratio_vs_sft"] = round(cell[key] / base[key], 3)


def evaluate_targets(cells: list[dict], device: str) -> list[dict]:
    min_seq, speed, memory = TARGETS[device]
    out = []
    for cell in cells:
        # The targets are for SFT; a preference method's backend ratios are in its own table.
        if cell["method"] != "sft" or cell["backend"] == "hf" or "speed_ratio_vs_hf" not in cell \
                or cell["seq_len"] < min_seq:
            continue
        out.append({"backend": cell["backend"], "seq_len": cell["seq_len"], "batch_size": cell["batch_size"],
                    "speed_ratio": cell["speed_ratio_vs_hf"], "speed_target": speed,
                    "speed_met": cell["speed_ratio_vs_hf"] >= speed,
                    "memory_ratio": cell["memory_ratio_vs_hf"], "memory_target": memory,
                    "memory_met": cell["memory_ratio_vs_hf"] <= memory})
    return out


def write_report(report: dict, out: Path) -> None:
    from qlora_kit.benchmark.markdown import render_markdown
    from qlora_kit.benchmark.plots import write_plots

    report["plots"] = write_plots(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
