"""`qlora-kit eval RUN_DIR`: did fine-tuning help? base vs few-shot vs adapter vs merged vs GGUF (vs an old model's
recorded answers), one report."""

from __future__ import annotations

from qlora_kit.cli import add_event_args, event_log


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "eval", parents=[common], help="compare base, few-shot prompting, the tuned model, merged and GGUF",
        description="Answer the run's held-out rows with every system (greedy decoding, the training chat "
                    "template) and score them: exact match, normalized exact match, token F1, chrF, loss and "
                    "perplexity on the reference, prompt tokens and tokens/s. Writes RUN_DIR/eval/ (report.json, "
                    "report.md, predictions.jsonl, charts) and ends with a verdict backed by a 95% bootstrap "
                    "interval.")
    p.add_argument("run_dir", help="a complete run directory")
    p.add_argument("--systems", help="comma-separated: base, fewshot, adapter, merged, gguf:TYPE, recorded:FILE "
                                     "(an old model's answers to the held-out rows, JSONL; see the README) "
                                     "(default: base, fewshot, adapter, and merged and every GGUF the run has)")
    p.add_argument("--samples", type=int, help="evaluate at most N held-out rows (default: all)")
    p.add_argument("--data", help="held-out rows from this file instead of the run's eval split")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest generated answer (default 64)")
    p.add_argument("--fewshot", type=int, default=3, help="training examples in the few-shot prompt (default 3)")
    p.add_argument("--scorer", metavar="MODULE:FUNCTION", help="task score fn(prediction, reference, row) -> float")
    p.add_argument("--out", help="report directory (default: RUN_DIR/eval)")
    add_event_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    with event_log(args) as (log, warnings):
        out = execute(args, log, warnings)
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


def execute(args, log, warnings=()):
    """Shared by the CLI and `qk.evaluate`; returns the report directory."""
    from qlora_kit.errors import UsageError
    from qlora_kit.eval.run import EvalOptions, check_eval, evaluate
    from qlora_kit.eventlog import run_stage

    for flag, value, least in (("--samples", args.samples, 1), ("--max-new-tokens", args.max_new_tokens, 1),
                               ("--fewshot", args.fewshot, 1)):
        if value is not None and value < least:
            raise UsageError(f"{flag}: {value} must be at least {least}")
    options = EvalOptions(systems=args.systems, samples=args.samples, data=args.data,
                          max_new_tokens=args.max_new_tokens, fewshot=args.fewshot, scorer=args.scorer)
    check_eval(args.run_dir, options)  # refused here: nothing reaches the run's events.jsonl
    with run_stage(log, args.run_dir):
        for message in warnings:
            log.emit("warning", message=message, source="plugins")
        return evaluate(args.run_dir, options, args.out, log=log)
