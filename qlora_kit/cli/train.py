"""`qlora-kit train RECIPE [--resume] [--overwrite] [--set k=v ...]`."""

from __future__ import annotations

from qlora_kit.cli import add_recipe_args


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "train", parents=[common], help="fine-tune with QLoRA as the recipe says",
        description="Load the base model in 4-bit NF4, attach LoRA adapters, train with TRL's SFTTrainer and write "
                    "a run directory (output.dir/output.name). Ctrl-C saves a checkpoint; --resume continues.")
    add_recipe_args(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    group.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.train.runner import train

    return train(args.recipe, args.overrides, resume=args.resume, overwrite=args.overwrite)
