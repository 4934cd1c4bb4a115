"""`qlora-kit eval RUN_DIR`: did fine-tuning help? base vs few-shot vs adapter vs merged vs GGUF (vs an old model's
recorded answers), one report."""

from __future__ import annotations

from qlora_kit.cli.common import add_event_args, event_log
from qlora_kit.cli.options import add_option_flags, add_set_arg
from qlora_kit.recipe.options import EvalOptions


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "eval", parents=[common], help="compare base, few-shot prompting, the tuned model, merged and GGUF",
        description="Answer the run's held-out rows with every system (greedy decoding, the training chat "
                    "template) and score them: exact match, normalized exact match, token F1, chrF, loss and "
                    "perplexity on the reference, prompt tokens and tokens/s. Writes RUN_DIR/eval/ (report.json, "
                    "report.md, predictions.jsonl, charts) and ends with a verdict backed by a 95% bootstrap "
                    "interval.")
    p.add_argument("run_dir", help="a complete run directory")
    add_option_flags(p, EvalOptions)
    add_set_arg(p, "eval", "samples=20")
    p.add_argument("--out", help="report directory (default: RUN_DIR/eval)")
    add_event_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from qlora_kit.cli.options import stage_options
    from qlora_kit.eval.run import run_eval_section
    from qlora_kit.eval.run import run_eval

    with event_log(args) as (log, warnings):
        # The flags over the run's own eval: section, as train's eval stage used it.
        options = stage_options(args, EvalOptions, "eval", base=run_eval_section(args.run_dir))
        out = run_eval(args.run_dir, options, log, out=args.out, warnings=warnings)
        report = json.loads((out / "report.json").read_text())
        for name, r in report["results"].items():
            print(f"{name:<12} exact {r['exact_match']:.3f}  norm {r['normalized_exact_match']:.3f}  "
                  f"F1 {r['token_f1']:.3f}  chrF {r['chrf']:.3f}  loss {_num(r['loss'], '.4f')}  "
                  f"prompt tokens {_num(r['prompt_tokens_per_request'], '.0f')}")
        for warning in report["warnings"]:
            print(f"warning: {warning}")
        print(report["verdict"]["text"])
        print(f"report: {out / 'report.md'}")
    return 0


def _num(value, spec: str) -> str:
    return "n/a" if value is None else f"{value:{spec}}"  # a recorded system has no loss and no prompt tokens
