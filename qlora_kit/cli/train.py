"""`qlora-kit train RECIPE [--resume] [--overwrite] [--set k=v ...] [--events FILE|-] [--hook M:A ...]`."""

from __future__ import annotations

import sys

from qlora_kit.cli import add_event_args, add_recipe_args, event_log


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "train", parents=[common], help="fine-tune with QLoRA as the recipe says",
        description="Load the base model in 4-bit NF4, attach LoRA adapters, train with TRL's SFTTrainer and write "
                    "a run directory (output.dir/output.name). Ctrl-C, SIGTERM or a file named STOP in the run "
                    "directory saves a checkpoint and stops; --resume continues.")
    add_recipe_args(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    group.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    add_event_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.api import run_training
    from qlora_kit.control import CancelToken, SignalCancel

    hint = " ".join(["qlora-kit train", args.recipe, *(f"--set {o}" for o in args.overrides), "--resume"])
    stage_args = ["--debug"] if getattr(args, "debug", False) else []
    token = CancelToken()

    def first_signal(name: str) -> None:
        print(f"{name}: saving a checkpoint after this step ({name} again stops at once)", file=sys.stderr,
              flush=True)

    with event_log(args) as (log, warnings), SignalCancel(token, on_first=first_signal):
        result = run_training(args.recipe, args.overrides, log, token, resume=args.resume, overwrite=args.overwrite,
                              console=_console, warnings=warnings, resume_hint=hint, stage_args=tuple(stage_args))
    return result.exit_code


def _console(text: str) -> None:
    print(text, flush=True)
