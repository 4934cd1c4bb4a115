"""`qlora-kit export RUN_DIR|MODEL_DIR --quant q4_k_m,q8_0`: GGUF files for llama.cpp/Ollama, verified."""

from __future__ import annotations

from qlora_kit.cli import add_event_args, event_log


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "export", parents=[common], help="write verified GGUF files (+ Ollama Modelfile)",
        description="Convert a run's merged model (or a Hugging Face model directory) to GGUF, offline, tensor by "
                    "tensor; quantize with llama.cpp's own quantizer; check tokens and logits through "
                    "llama-cpp-python (gguf/export_report.json) and write gguf/Modelfile for Ollama.")
    p.add_argument("source", help="a run directory (exports RUN_DIR/merged) or a Hugging Face model directory")
    p.add_argument("--check-only", metavar="MODEL.gguf",
                   help="write nothing: run the verifier (tokens, logits) on MODEL.gguf, made by us or elsewhere, "
                        "against SOURCE: qlora-kit export --check-only MODEL.gguf HF_DIR")
    p.add_argument("--quant", default="q8_0",
                   help="comma-separated types: f32, f16, bf16, q8_0, q4_0, q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k")
    p.add_argument("--out", help="output directory (default: SOURCE/gguf)")
    p.add_argument("--no-verify", action="store_true", help="skip the llama.cpp token and logit checks")
    p.add_argument("--allow-mismatch", action="store_true", help="keep files that fail verification")
    p.add_argument("--samples", type=int, default=4, help="held-out rows for the logit check (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace existing GGUF files")
    add_event_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    if args.check_only:
        return _check_only(args)
    with event_log(args) as (log, warnings):
        out = execute(args, log, warnings)
        report = json.loads((out / "export_report.json").read_text())
        for entry in report["exports"].values():
            check = entry.get("verification")
            note = f"; {check['summary']}" if check else ""
            print(f"{entry['file']}: {entry['bytes'] / 2**20:.2f} MiB{note}")
        print(f"Modelfile: {out / 'Modelfile'} (template: {report['modelfile']['template'] or 'fallback'})")
    return 0


def execute(args, log, warnings=()):
    """The export the arguments describe, reported into `log` (the run's events.jsonl when SOURCE is a run);
    returns the output dir. Shared by the CLI and `qk.export`."""
    from qlora_kit.errors import UsageError
    from qlora_kit.eventlog import run_stage
    from qlora_kit.export.run import ExportOptions, export_plan, plan_export

    quants = [q.strip() for q in args.quant.split(",") if q.strip()]
    if not quants:
        raise UsageError("--quant: name at least one type, e.g. --quant q4_k_m,q8_0")
    options = ExportOptions(quants=quants, verify=not args.no_verify, allow_mismatch=args.allow_mismatch,
                            overwrite=args.overwrite, samples=args.samples)
    plan = plan_export(args.source, options, args.out)  # refused here: nothing reaches the run's events.jsonl
    with run_stage(log, plan.run_dir):
        for message in warnings:
            log.emit("warning", message=message, source="plugins")
        return export_plan(plan, options, log=log)


def _check_only(args) -> int:
    import json

    from qlora_kit.errors import StageError
    from qlora_kit.export.run import check_only

    result = check_only(args.check_only, args.source, args.samples)
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2))
    if not result["passed"]:
        raise StageError(f"{args.check_only}: verification failed ({result['quant']}): {result['summary']}")
    print(f"{args.check_only}: passed ({result['quant']}): {result['summary']}")
    return 0
