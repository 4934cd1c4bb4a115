"""`qlora-kit export`: a run's merged model (or any HF model dir) -> verified GGUF files + an Ollama Modelfile.

Every file is written under a temporary name and renamed only once written and verified, so an interrupted or
failed export never leaves a complete-looking .gguf behind.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from qlora_kit.errors import StageError, UsageError
from qlora_kit.export.convert import QUANT_TYPES, get_quant_type, llama_cpp_quantize, write_gguf
from qlora_kit.export.verify import captured_native_output

# Approximate bytes per weight, for the free-space check before writing.
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 1.07, "q6_k": 0.82, "q5_k_m": 0.7, "q4_k_m": 0.6,
                    "q4_0": 0.57, "q3_k_m": 0.5, "q2_k": 0.42}
INTERMEDIATE = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}  # K-quants start from the model's dtype


@dataclass
class ExportOptions:
    quants: list[str] = field(default_factory=lambda: ["q8_0"])
    verify: bool = True
    allow_mismatch: bool = False
    overwrite: bool = False
    samples: int = 4


def resolve_source(source: Path) -> tuple[Path, Path | None]:
    """(model dir, run dir or None). A run directory exports its merged model."""
    if (source / "run.json").is_file():
        merged = source / "merged"
        if not (merged / "config.json").is_file():
            raise UsageError(f"{source}: no merged model to export; merge it first: qlora-kit merge {source}")
        return merged, source
    if (source / "config.json").is_file():
        return source, None
    raise UsageError(f"{source}: neither a run directory (run.json) nor a Hugging Face model directory (config.json)")


def export(source: str | Path, options: ExportOptions, out: str | Path | None = None, log=None) -> Path:
    """Export; with an EventLog, `stage` events for "export" and an `artifact` event per GGUF, the Modelfile and
    the report."""
    from qlora_kit.eventlog import emit_artifact, stage

    with stage(log, "export"):
        out = _export(source, options, out)
    report = json.loads((out / "export_report.json").read_text())
    for entry in report["exports"].values():
        emit_artifact(log, "gguf", out / entry["file"])
    if (out / "Modelfile").is_file():
        emit_artifact(log, "modelfile", out / "Modelfile")
    emit_artifact(log, "export_report", out / "export_report.json")
    return out


def _export(source: str | Path, options: ExportOptions, out: str | Path | None = None) -> Path:
    model_dir, run_dir = resolve_source(Path(source))
    quants = [get_quant_type(q) for q in options.quants]
    out = Path(out) if out else (run_dir or model_dir) / "gguf"
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("quantization_config"):
        raise UsageError(f"{model_dir}: a quantized ({config['quantization_config'].get('quant_method')}) checkpoint "
                         "cannot be converted; merge into 16-bit weights first: qlora-kit merge RUN_DIR")
    stem = (run_dir or model_dir).name if run_dir else model_dir.name
    targets = {q.name: out / f"{stem}-{q.name}.gguf" for q in quants}
    existing = [p for p in targets.values() if p.exists()]
    if existing and not options.overwrite:
        raise UsageError(f"{existing[0]} already exists; pass --overwrite to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: cannot create {out}: {exc.strerror or exc}") from None
    _check_disk(model_dir, out, [q.name for q in quants])
    report = {"source": str(model_dir), "run": str(run_dir) if run_dir else None, "exports": {}}
    checker = _Verifier(model_dir, run_dir, options.samples) if options.verify else None
    intermediate, intermediate_facts = None, {}
    try:
        for q in quants:
            t0, tmp = time.time(), Path(str(targets[q.name]) + ".tmp")
            if q.via_llama_cpp:
                if intermediate is None:  # K-quants all start from one GGUF in the model's own precision
                    intermediate, intermediate_facts = _write_intermediate(model_dir, out, stem, config)
                entry = {**intermediate_facts, **_quantize(intermediate, tmp, q)}
            else:
                entry = write_gguf(model_dir, tmp, q.ggml, q.file_type, stem)
            entry.update(seconds=round(time.time() - t0, 3), bytes=tmp.stat().st_size)
            if checker:
                entry["verification"] = checker.check(q.name, tmp)
                if not entry["verification"]["passed"] and not options.allow_mismatch:
                    raise StageError(f"verification failed for {q.name}: {entry['verification']['summary']}; "
                                     "nothing was written (--allow-mismatch writes it anyway)")
            tmp.replace(targets[q.name])
            report["exports"][q.name] = {**entry, "file": targets[q.name].name}
    finally:
        for leftover in out.glob("*.gguf.tmp"):
            leftover.unlink()
        if intermediate and intermediate.exists():
            intermediate.unlink()
    from qlora_kit.export.modelfile import write_modelfile

    report["modelfile"] = write_modelfile(out, model_dir, run_dir, targets, report)
    (out / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return out


def _write_intermediate(model_dir: Path, out: Path, stem: str, config: dict) -> tuple[Path, dict]:
    base = QUANT_TYPES[INTERMEDIATE.get(config.get("dtype") or config.get("torch_dtype") or "float32", "f32")]
    path = out / f".{stem}-{base.name}.intermediate.gguf"
    return path, {**write_gguf(model_dir, path, base.ggml, base.file_type, stem), "from": base.name}


def _quantize(src: Path, dst: Path, q) -> dict:
    from qlora_kit.export.inspect import fallbacks, tensor_types

    with captured_native_output() as log:
        try:
            llama_cpp_quantize(src, dst, q.file_type)
        except StageError as exc:
            raise StageError(f"{exc}: {log['text'].strip().splitlines()[-1:] or ''}") from None
    return {"tensor_types": tensor_types(dst), "fallbacks": fallbacks(dst, q.name)}


def _check_disk(model_dir: Path, out: Path, quants: list[str]) -> None:
    from qlora_kit.merge.checkpoint import Checkpoint

    ckpt = Checkpoint(model_dir)
    params = sum(_numel(ckpt.shape(n)) for n in ckpt.names())
    needed = params * (sum(BYTES_PER_WEIGHT[q] for q in quants) + 4.0)  # + an intermediate for K-quants
    free = shutil.disk_usage(out).free
    if free < needed:
        raise StageError(f"not enough disk space at {out}: the export needs about {needed / 2**30:.2f} GiB, "
                         f"{free / 2**30:.2f} GiB free")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _Verifier:
    """Loads the merged model and tokenizer once; checks each GGUF as it is written."""

    def __init__(self, model_dir: Path, run_dir: Path | None, samples: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
        self.rows, self.rows_from = _held_out(model_dir, run_dir, self.tokenizer, samples)
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"},
                {"role": "assistant", "content": "42."}]
        self.chat_sample = self.tokenizer.apply_chat_template(chat, tokenize=False) \
            if self.tokenizer.chat_template else "no chat template"
        from qlora_kit.export.verify import hf_logits

        self.reference = hf_logits(self.model, self.rows)

    def check(self, quant: str, path: Path) -> dict:
        from qlora_kit.export.verify import check_tokens, gguf_logits, judge
        from qlora_kit.logits import compare_logits

        tokens = check_tokens(path, self.tokenizer, self.chat_sample)
        logits = compare_logits(self.reference, gguf_logits(path, self.rows))
        passed, summary = judge(quant, tokens, logits)
        return {"passed": passed, "summary": summary, "tokens": tokens, "logits": logits,
                "samples": len(self.rows), "samples_from": self.rows_from}


def _held_out(model_dir: Path, run_dir: Path | None, tokenizer, n: int):
    if run_dir is not None:
        from qlora_kit.data.held_out import held_out_rows
        from qlora_kit.recipe import load_recipe

        source, rows = held_out_rows(load_recipe(run_dir / "recipe.yaml"), tokenizer, n)
        return [r.input_ids for r in rows], source
    from qlora_kit.export.verify import TOKEN_TEXTS

    return [tokenizer(t, add_special_tokens=True)["input_ids"] for t in TOKEN_TEXTS[:n]], "fixed texts"
