"""`qlora-kit merge RUN_DIR`: merge the run's LoRA adapter into 16-bit weights (RUN_DIR/merged/)."""

from __future__ import annotations

from qlora_kit.cli.common import add_event_args, event_log
from qlora_kit.cli.options import add_option_flags, add_set_arg
from qlora_kit.recipe.options import MergeOptions


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "merge", parents=[common], help="merge a run's LoRA adapter into 16-bit weights",
        description="Stream the base checkpoint tensor by tensor, add the LoRA deltas and write safetensors shards "
                    "to RUN_DIR/merged/ (config without quantization, generation config, tokenizer with the chat "
                    "template used in training), then check the merged model against the trained adapter "
                    "(merge_report.json).")
    p.add_argument("run_dir", help="a complete run directory (with adapter/)")
    add_option_flags(p, MergeOptions)
    add_set_arg(p, "merge", "max_shard_size=1GB")
    p.add_argument("--out", help="output directory (default: RUN_DIR/merged)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_event_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.cli.options import stage_options
    from qlora_kit.merging.run import run_merge, summary

    with event_log(args) as (log, warnings):
        options = stage_options(args, MergeOptions, "merge")
        out = run_merge(args.run_dir, options, log, out=args.out, overwrite=args.overwrite, warnings=warnings)
        print(f"{summary(out / 'merge_report.json')}\nmerged model: {out}")
    return 0
