"""`qlora-kit merge RUN_DIR`: merge the run's LoRA adapter into 16-bit weights (RUN_DIR/merged/)."""

from __future__ import annotations

from qlora_kit.cli import add_event_args, event_log


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "merge", parents=[common], help="merge a run's LoRA adapter into 16-bit weights",
        description="Stream the base checkpoint tensor by tensor, add the LoRA deltas and write safetensors shards "
                    "to RUN_DIR/merged/ (config without quantization, generation config, tokenizer with the chat "
                    "template used in training), then check the merged model against the trained adapter "
                    "(merge_report.json).")
    p.add_argument("run_dir", help="a complete run directory (with adapter/)")
    p.add_argument("--base", choices=("dequantized", "original"), default="dequantized",
                   help="dequantized (default): the NF4 weights the adapter was trained against; original: the "
                        "16-bit weights the run started from")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="output dtype (auto: the base checkpoint's)")
    p.add_argument("--out", help="output directory (default: RUN_DIR/merged)")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard, e.g. 500MB, 2GB (default 2GB)")
    p.add_argument("--no-verify", action="store_true", help="skip the fidelity check (it loads both models)")
    p.add_argument("--no-compare", action="store_true", help="do not also measure the other merge base")
    p.add_argument("--samples", type=int, default=8, help="held-out rows for the fidelity check (default 8)")
    p.add_argument("--allow-mismatch", action="store_true", help="write the merge even if the fidelity check fails")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_event_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.merge.run import summary

    with event_log(args) as (log, warnings):
        out = execute(args, log, warnings)
        print(f"{summary(out / 'merge_report.json')}\nmerged model: {out}")
    return 0


def execute(args, log, warnings=()):
    """The merge the arguments describe, reported into `log` (the run's events.jsonl); returns the output dir.
    Shared by the CLI and `qk.merge`."""
    from qlora_kit.errors import UsageError
    from qlora_kit.eventlog import run_stage
    from qlora_kit.merge.merge import MergeOptions
    from qlora_kit.merge.run import check_merge, merge_run
    from qlora_kit.sizes import parse_size

    try:
        shard = parse_size(args.max_shard_size)
    except ValueError as exc:
        raise UsageError(f"--max-shard-size: {exc}") from None
    if args.samples <= 0:
        raise UsageError("--samples: must be a positive number")
    options = MergeOptions(base=args.base, dtype=args.dtype, max_shard_bytes=shard, verify=not args.no_verify,
                           compare=not args.no_compare, samples=args.samples, allow_mismatch=args.allow_mismatch)
    check_merge(args.run_dir, args.out, args.overwrite)  # refused here: nothing reaches the run's events.jsonl
    with run_stage(log, args.run_dir):
        for message in warnings:
            log.emit("warning", message=message, source="plugins")
        return merge_run(args.run_dir, options, args.out, overwrite=args.overwrite, log=log)
