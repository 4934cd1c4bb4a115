"""`qlora-kit export`: a run's merged model (or any HF model dir) -> verified GGUF files + an Ollama Modelfile.

Every file is written under a temporary name and renamed only once written and verified, so an interrupted or
failed export never leaves a complete-looking .gguf behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from qlora_kit.errors import StageError, UsageError
from qlora_kit.gguf.tensors.convert import QUANT_TYPES, get_quant_type, write_gguf
from qlora_kit.recipe.options import ExportOptions

# Approximate bytes per weight, for the free-space check before writing.
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 1.07, "q6_k": 0.82, "q5_k_m": 0.7, "q4_k_m": 0.6,
                    "q4_0": 0.57, "q3_k_m": 0.5, "q2_k": 0.42}
# Tensors a K-quant leaves unquantized keep the model's own precision, as in the GGUF llama.cpp would start from.
INTERMEDIATE = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


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


@dataclass
class ExportPlan:
    """What an export will read and write, decided before any work."""
    model_dir: Path
    run_dir: Path | None
    quants: list
    out: Path
    config: dict
    stem: str
    targets: dict[str, Path]


def plan_export(source: str | Path, options: ExportOptions, out: str | Path | None = None,
                overwrite: bool = False) -> ExportPlan:
    """Everything export refuses before any work (exit 2), so a refused command writes nothing: no file, and no
    event in the run's events.jsonl (the CLI attaches to the run's log only after this)."""
    from qlora_kit.model.check import check_config

    model_dir, run_dir = resolve_source(Path(source))
    quants = [get_quant_type(q) for q in options.quant]
    out = Path(out) if out else (run_dir or model_dir) / "gguf"
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("quantization_config"):
        raise UsageError(f"{model_dir}: a quantized ({config['quantization_config'].get('quant_method')}) checkpoint "
                         "cannot be converted; merge into 16-bit weights first: qlora-kit merge RUN_DIR")
    check_config(model_dir)  # one line, not transformers' dump of the config, when it cannot build it
    stem = run_dir.name if run_dir else model_dir.name
    targets = {q.name: out / f"{stem}-{q.name}.gguf" for q in quants}
    existing = [p for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} already exists; pass --overwrite to replace it")
    return ExportPlan(model_dir, run_dir, quants, out, config, stem, targets)


def run_export(source: str | Path, options: ExportOptions, log, *, out: str | Path | None = None,
               overwrite: bool = False, warnings: tuple[str, ...] | list[str] = ()) -> Path:
    """The export stage (qk.export, `qlora-kit export`), recorded in the run's events.jsonl when SOURCE is a run;
    returns the output dir."""
    from qlora_kit.eventlog import run_stage

    plan = plan_export(source, options, out, overwrite)  # refused here: nothing reaches the run's events.jsonl
    with run_stage(log, plan.run_dir):
        for message in warnings:
            log.emit("warning", message=message, source="plugins")
        return export_plan(plan, options, log=log)


def export(source: str | Path, options: ExportOptions, out: str | Path | None = None, log=None,
           overwrite: bool = False) -> Path:
    """Export; with an EventLog, `stage` events for "export" and an `artifact` event per GGUF, the Modelfile and
    the report (none when the export is refused before any work)."""
    return export_plan(plan_export(source, options, out, overwrite), options, log)


def export_plan(plan: ExportPlan, options: ExportOptions, log=None) -> Path:
    from qlora_kit.eventlog import emit_artifact, stage

    with stage(log, "export"):
        out = _export(plan, options)
    report = json.loads((out / "export_report.json").read_text())
    for entry in report["exports"].values():
        emit_artifact(log, "gguf", out / entry["file"])
    if (out / "Modelfile").is_file():
        emit_artifact(log, "modelfile", out / "Modelfile")
    emit_artifact(log, "export_report", out / "export_report.json")
    return out


def _export(plan: ExportPlan, options: ExportOptions) -> Path:
    model_dir, run_dir, out, stem, targets = plan.model_dir, plan.run_dir, plan.out, plan.stem, plan.targets
    quants, config = plan.quants, plan.config
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out: cannot create {out}: {exc.strerror or exc}") from None
    _check_resources(model_dir, out, [q.name for q in quants], options.verify)
    from qlora_kit.gguf.ollama.modelfile import plan_modelfile, write_modelfile

    report = {"source": str(model_dir), "run": str(run_dir) if run_dir else None, "exports": {}}
    modelfile = plan_modelfile(model_dir, run_dir, targets)
    checker = _Verifier(model_dir, run_dir, options.samples) if options.verify else None
    checked_base = None
    try:
        for q in quants:
            t0, tmp = time.time(), Path(str(targets[q.name]) + ".tmp")
            if q.mixture:
                base = _base_type(config)
                if checker and checked_base is None:
                    checked_base = _check_base(checker, model_dir, out, stem, base, options.allow_mismatch)
                entry = {**write_gguf(model_dir, tmp, base.ggml, q.file_type, stem, mixture=q.name),
                         "from": base.name, **(checked_base or {})}
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
        for leftover in [*out.glob("*.gguf.tmp"), *out.glob(".*.intermediate.gguf")]:
            leftover.unlink()
    report["modelfile"] = write_modelfile(out, modelfile)
    (out / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return out


def _base_type(config: dict):
    return QUANT_TYPES[INTERMEDIATE.get(config.get("dtype") or config.get("torch_dtype") or "float32", "f32")]


def _check_base(checker, model_dir: Path, out: Path, stem: str, base, allow_mismatch: bool) -> dict:
    """Verify the conversion at the model's own precision before any K-quant: a conversion error (e.g. Q/K not
    un-permuted) is plain there but can hide inside a 4-bit type's allowed error. The file is written, checked
    and removed; the K-quants are then encoded straight from the checkpoint, through the same row-block path."""
    path = out / f".{stem}-{base.name}.intermediate.gguf"
    try:
        write_gguf(model_dir, path, base.ggml, base.file_type, stem)
        check = checker.check(base.name, path)
    finally:
        path.unlink(missing_ok=True)
    if not check["passed"] and not allow_mismatch:
        raise StageError(f"verification failed for the {base.name} conversion the K-quants are quantized from: "
                         f"{check['summary']}; nothing was written (--allow-mismatch writes it anyway)")
    return {"intermediate_verification": {k: check[k] for k in ("passed", "summary", "logits")}}


def _check_resources(model_dir: Path, out: Path, quants: list[str], verify: bool) -> None:
    """Disk for every file, and memory for the conversion (verification is checked once its rows are known)."""
    from qlora_kit.gguf.tensors.resources import conversion_bytes, require, require_disk
    from qlora_kit.merging.checkpoint import Checkpoint

    ckpt = Checkpoint(model_dir)
    params = sum(_numel(ckpt.shape(n)) for n in ckpt.names())
    checked_base = 4.0 if verify and any(QUANT_TYPES[q].mixture for q in quants) else 0.0  # see _check_base
    require_disk(out, params * (sum(BYTES_PER_WEIGHT[q] for q in quants) + checked_base))
    require(conversion_bytes(model_dir), "the conversion")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _Verifier:
    """What the checks need from the HF side, all computed before the first GGUF is written: the probe rows, the
    HF tokenizer's ids for the token check (the tokenizer itself is released before conversion), and the reference
    logits, streamed layer by layer from the shards (qlora_kit/gguf/verify/reference.py), so the model is never held
    whole."""

    def __init__(self, model_dir: Path, run_dir: Path | None, samples: int):
        from qlora_kit.gguf.tensors.resources import require, verification_bytes
        from qlora_kit.gguf.verify.reference import reference_logits
        from qlora_kit.gguf.vocab.expectations import TokenExpectations
        from qlora_kit.gguf.vocab.vocab import effective_tokenizer_json, load_hf_tokenizer
        from qlora_kit.merging.checkpoint import Checkpoint

        tokenizer = load_hf_tokenizer(model_dir)
        self.rows, self.rows_from = _held_out(model_dir, run_dir, tokenizer, samples)
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"},
                {"role": "assistant", "content": "42."}]
        try:
            chat_sample = tokenizer.apply_chat_template(chat, tokenize=False) \
                if tokenizer.chat_template else "no chat template"
        except Exception:  # noqa: BLE001 - templates that refuse a system turn (Gemma, Mistral): without it
            chat_sample = tokenizer.apply_chat_template(chat[1:], tokenize=False)
        self.tokens = TokenExpectations.of(tokenizer, chat_sample,
                                           effective_tokenizer_json(tokenizer, model_dir / "tokenizer.json"))
        del tokenizer
        require(verification_bytes(Checkpoint(model_dir), self.rows), "verification")
        # The one place the reference logits are computed: streamed layer by layer from the shards.
        self.reference = reference_logits(model_dir, self.rows)

    def check(self, quant: str, path: Path) -> dict:
        from qlora_kit.gguf.verify.verify import check_tokens, compare, decisive_top1, gguf_logits, judge

        tokens = check_tokens(path, self.tokens)
        candidate = gguf_logits(path, self.rows)
        if candidate[0].shape[-1] != self.reference[0].shape[-1]:
            raise UsageError(f"{path.name}: {candidate[0].shape[-1]} logits per position, the HF model has "
                             f"{self.reference[0].shape[-1]}: this GGUF is not a conversion of that model")
        logits = compare(self.reference, candidate)
        logits.update(decisive_top1(logits.pop("positions"), quant))
        passed, summary = judge(quant, tokens, logits)
        return {"passed": passed, "summary": summary, "tokens": tokens, "logits": logits,
                "samples": len(self.rows), "samples_from": self.rows_from}


def check_only(gguf_path: str | Path, hf_dir: str | Path, samples: int = 4) -> dict:
    """`export --check-only MODEL.gguf HF_DIR`: the verifier on any GGUF file, ours or made elsewhere."""
    gguf_path, hf_dir = Path(gguf_path), Path(hf_dir)
    if not gguf_path.is_file():
        raise UsageError(f"{gguf_path}: no such file")
    model_dir, run_dir = resolve_source(hf_dir)
    from qlora_kit.model.check import check_config

    check_config(model_dir)
    quant = _quant_of(gguf_path)
    result = _Verifier(model_dir, run_dir, samples).check(quant, gguf_path)
    return {"file": str(gguf_path), "source": str(model_dir), "quant": quant, **result}


def _quant_of(path: Path) -> str:
    """Our name for the file's general.file_type (a K-quant's _S/_L variants are judged like _M)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).get_field("general.file_type")
    if field is None:
        return "unknown"
    file_type = int(field.contents())
    by_type = {q.file_type: q.name for q in QUANT_TYPES.values()}
    by_type.update({11: "q3_k_m", 13: "q3_k_m", 14: "q4_k_m", 16: "q5_k_m"})  # Q3_K_S/L, Q4_K_S, Q5_K_S
    return by_type.get(file_type, f"file_type {file_type}")


# Tokens per probe row. Verification holds logits for every probe position, twice (the HF reference and llama.cpp's
# copy), plus llama.cpp's buffers for the longest row (resources.verification_bytes): 4 rows of a run's 2,048-token
# rows with a 128k vocabulary would need ~10 GiB; 128 tokens keep it near 630 MiB and still put every conversion
# error (Q/K order, RoPE, norms, tokens) on many positions.
PROBE_TOKENS = 128


def _held_out(model_dir: Path, run_dir: Path | None, tokenizer, n: int):
    if run_dir is not None:
        from qlora_kit.data.held_out import held_out_rows
        from qlora_kit.recipe import load_recipe

        source, rows = held_out_rows(load_recipe(run_dir / "recipe.yaml"), tokenizer, n)
        return [r.input_ids[:PROBE_TOKENS] for r in rows], source
    from qlora_kit.gguf.verify.verify import TOKEN_TEXTS

    return [tokenizer(t, add_special_tokens=True)["input_ids"] for t in TOKEN_TEXTS[:n]], "fixed texts"
