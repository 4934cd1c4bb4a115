"""`qlora-kit export RUN_DIR|MODEL_DIR --quant q4_k_m,q8_0`: GGUF files for llama.cpp/Ollama, verified."""

from __future__ import annotations

from qlora_kit.cli.common import add_event_args, event_log
from qlora_kit.cli.options import add_option_flags, add_set_arg
from qlora_kit.recipe.options import ExportOptions


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "export", parents=[common], help="write verified GGUF files (+ Ollama Modelfile)",
        description="Convert a run's merged model (or a Hugging Face model directory) to GGUF, offline, tensor by "
                    "tensor; quantize with llama.cpp's own quantizer; check tokens and logits through "
                    "llama-cpp-python (gguf/export_report.json) and write gguf/Modelfile for Ollama.")
    p.add_argument("source", help="a run directory (exports RUN_DIR/merged) or a Hugging Face model directory")
    p.add_argument("--check-only", metavar="MODEL.gguf",
                   help="write nothing: run the verifier (tokens, logits) on MODEL.gguf, made by us or elsewhere, "
                        "against SOURCE: qlora-kit export --check-only MODEL.gguf HF_DIR (default: none; export "
                        "SOURCE)")
    add_option_flags(p, ExportOptions)
    add_set_arg(p, "export", "quant=[q8_0]")
    p.add_argument("--out", help="output directory (default: SOURCE/gguf)")
    p.add_argument("--overwrite", action="store_true", help="replace existing GGUF files")
    add_event_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from qlora_kit.cli.options import stage_options
    from qlora_kit.gguf.run import run_export

    if args.check_only:
        return _check_only(args)
    with event_log(args) as (log, warnings):
        options = stage_options(args, ExportOptions, "export")
        out = run_export(args.source, options, log, out=args.out, overwrite=args.overwrite, warnings=warnings)
        report = json.loads((out / "export_report.json").read_text())
        for entry in report["exports"].values():
            check = entry.get("verification")
            note = f"; {check['summary']}" if check else ""
            print(f"{entry['file']}: {entry['bytes'] / 2**20:.2f} MiB{note}")
        print(f"Modelfile: {out / 'Modelfile'} (template: {report['modelfile']['template'] or 'fallback'})")
    return 0


def _check_only(args) -> int:
    import json

    from qlora_kit.cli.options import stage_options
    from qlora_kit.errors import StageError
    from qlora_kit.gguf.run import check_only

    result = check_only(args.check_only, args.source, stage_options(args, ExportOptions, "export").samples)
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2))
    if not result["passed"]:
        raise StageError(f"{args.check_only}: verification failed ({result['quant']}): {result['summary']}")
    print(f"{args.check_only}: passed ({result['quant']}): {result['summary']}")
    return 0
