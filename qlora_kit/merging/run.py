"""Merge a finished run: RUN_DIR/adapter + the run's base model -> RUN_DIR/merged/ with merge_report.json.

Runs without Unsloth (plain transformers + peft + bitsandbytes), so `train` calls it in a separate process.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from qlora_kit.errors import QKError, StageError, UsageError
from qlora_kit.merging.checkpoint import Checkpoint
from qlora_kit.merging.merge import (check_tied, load_adapter_checked, merge_weights, publish,
                                   resolve_out_dtype, temp_dir_for, write_model_files)
from qlora_kit.recipe.options import MergeOptions
from qlora_kit.training.rundir import RunDir, atomic_write_json

# Top-1 agreement below this means the merge is wrong (a missing scale, a transposed delta), not float noise.
MIN_TOP1 = 0.95


def run_merge(run_dir: str | Path, options: MergeOptions, log, *, out: str | Path | None = None,
              overwrite: bool = False, warnings: tuple[str, ...] | list[str] = ()) -> Path:
    """The merge stage (qk.merge, `qlora-kit merge`), recorded in the run's events.jsonl; returns the output dir."""
    from qlora_kit.eventlog import run_stage

    check_merge(run_dir, out, overwrite)  # refused here: nothing reaches the run's events.jsonl
    with run_stage(log, Path(run_dir)):
        for message in warnings:
            log.emit("warning", message=message, source="plugins")
        return merge_run(run_dir, options, out, overwrite=overwrite, log=log)


def merge_run(run_dir: str | Path, options: MergeOptions, out: str | Path | None = None,
              overwrite: bool = False, log=None) -> Path:
    """Merge; with an EventLog, `stage` events for "merge" and an `artifact` event per shard and the report."""
    from qlora_kit.eventlog import emit_artifact, stage

    with stage(log, "merge"):
        out = _merge_run(run_dir, options, out, overwrite)
    for shard in sorted(out.glob("*.safetensors")):
        emit_artifact(log, "merged_shard", shard)
    emit_artifact(log, "merge_report", out / "merge_report.json")
    return out


def check_merge(run_dir: str | Path, out: str | Path | None, overwrite: bool) -> tuple[RunDir, dict, Path]:
    """What merge refuses before any work (exit 2); the CLI checks it before it records into the run's log, so a
    refused merge leaves no event there."""
    run = RunDir(Path(run_dir))
    status = run.require_complete("merge")
    out = Path(out) if out else run.root / "merged"
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    return run, status, out


def _merge_run(run_dir: str | Path, options: MergeOptions, out: str | Path | None, overwrite: bool) -> Path:
    run, status, out = check_merge(run_dir, out, overwrite)
    from qlora_kit.recipe import load_recipe

    recipe = load_recipe(run.recipe)
    adapter = load_adapter_checked(run.adapter)
    ckpt = Checkpoint(base_model_dir(status.get("base_model") or recipe.model.name, recipe.model.revision))
    if ckpt.prequantized and options.base == "original":
        raise UsageError(f"{ckpt.path} is a pre-quantized 4-bit checkpoint: there are no original 16-bit weights, "
                         "so only --base dequantized is possible")
    check_tied(ckpt, adapter)
    train_dtype = getattr(torch, recipe.model.dtype)
    out_dtype = resolve_out_dtype(options.dtype, ckpt)
    tmp = temp_dir_for(out)
    try:
        t0 = time.time()
        facts = merge_weights(ckpt, adapter, tmp, options, train_dtype, out_dtype)
        write_model_files(ckpt, run.adapter, tmp, out_dtype)
        report = {"run": str(run.root), "base_model": str(ckpt.path), "base": options.base,
                  "dtype": str(out_dtype).removeprefix("torch."), "train_dtype": recipe.model.dtype,
                  "prequantized_base": ckpt.prequantized, "scale": adapter.scale, **facts,
                  "merge_seconds": round(time.time() - t0, 3)}
        if options.verify:
            report["fidelity"] = fidelity_report(recipe, run, ckpt, adapter, tmp, options, train_dtype, out_dtype)
        atomic_write_json(tmp / "merge_report.json", report)
        _enforce(report, options)
        publish(tmp, out, overwrite)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (QKError, KeyboardInterrupt)):
            raise
        if isinstance(exc, OSError) and exc.errno == 28:
            raise StageError(f"disk full while writing {out}; free space and run merge again") from None
        raise
    return out


def base_model_dir(name: str, revision: str | None) -> str:
    """A local directory for the run's base: the recorded path, or the Hub snapshot already in the local cache."""
    if Path(name).is_dir():
        return name
    from huggingface_hub import snapshot_download

    try:  # the run downloaded it already; merging never fetches anything by itself
        return snapshot_download(name, revision=revision, local_files_only=True)
    except Exception:
        raise UsageError(f"base model {name!r} is neither a directory nor in the local Hugging Face cache; "
                         f"download it (`hf download {name}`) and run merge again") from None


def fidelity_report(recipe, run, ckpt, adapter, merged_dir, options, train_dtype, out_dtype) -> dict:
    from transformers import AutoTokenizer

    from qlora_kit.data.held_out import held_out_rows
    from qlora_kit.merging import fidelity as fid

    source, rows = held_out_rows(recipe, AutoTokenizer.from_pretrained(run.adapter), options.samples)
    ref_model = fid.reference_model(str(ckpt.path), str(run.adapter), train_dtype, ckpt.prequantized)
    reference = fid.logits_of(ref_model, rows)
    del ref_model
    result = {"samples": len(rows), "samples_from": source, "reference": "adapter on the 4-bit NF4 base (peft)"}
    merged = fid.plain_model(str(merged_dir), out_dtype)
    result[options.base] = fid.compare(reference, fid.logits_of(merged, rows), rows).as_dict()
    del merged
    other = "original" if options.base == "dequantized" else "dequantized"
    if options.compare and not ckpt.prequantized:
        scratch = merged_dir.parent / f".{merged_dir.name}-{other}"
        scratch.mkdir(exist_ok=True)
        try:
            merge_weights(ckpt, adapter, scratch, MergeOptions(base=other, max_shard_size=options.max_shard_size),
                       train_dtype, out_dtype)
            (scratch / "config.json").write_text((merged_dir / "config.json").read_text())
            model = fid.plain_model(str(scratch), out_dtype)
            result[other] = fid.compare(reference, fid.logits_of(model, rows), rows).as_dict()
            del model
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def _enforce(report: dict, options: MergeOptions) -> None:
    fidelity = report.get("fidelity")
    if not fidelity or options.allow_mismatch:
        return
    got = fidelity[options.base]
    if got["top1_agreement"] < MIN_TOP1:
        raise StageError(f"fidelity check failed: the merged model agrees with the trained adapter on only "
                         f"{got['top1_agreement']:.1%} of next-token predictions (max |delta logit| "
                         f"{got['max_abs_logit_diff']:.3g}); nothing was written. --allow-mismatch writes it anyway")


def summary(report_path: Path) -> str:
    report = json.loads(report_path.read_text())
    fid = report.get("fidelity", {}).get(report["base"])
    text = f"merged {report['tensors']} tensors into {report['shards']} shard(s), {report['dtype']}"
    if fid:
        text += (f"; vs the trained adapter: max |delta logit| {fid['max_abs_logit_diff']:.2e}, "
                 f"top-1 {fid['top1_agreement']:.1%}, KL {fid['mean_kl']:.2e}")
    return text
