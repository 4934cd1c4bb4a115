"""`qlora-kit train RECIPE [--nproc N] [--resume] [--overwrite] [--set k=v ...] [--events FILE|-] [--hook M:A ...]`.

Three ways this runs: one process (the default); several, when the recipe's `distributed` section or `--nproc`
asks for them (this process then supervises torchrun: qlora_kit.distributed.launch); or as one worker of a run that
torchrun or `accelerate launch` started (their environment says so: qlora_kit.distributed.env).
"""

from __future__ import annotations

import sys

from qlora_kit.cli.common import add_event_args, add_recipe_args, event_log


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "train", parents=[common], help="fine-tune with QLoRA as the recipe says",
        description="Load the base model in 4-bit NF4, attach LoRA adapters, train with TRL's SFTTrainer and write "
                    "a run directory (output.dir/output.name). Ctrl-C, SIGTERM or a file named STOP in the run "
                    "directory saves a checkpoint and stops; --resume continues.")
    add_recipe_args(p)
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train on N processes on this machine through torchrun (short for --set distributed.nproc=N; "
                        "the strategy becomes ddp unless the recipe says fsdp) (default: the recipe's distributed "
                        "section)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    group.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    add_event_args(p)
    p.set_defaults(func=run)


def nproc_overrides(recipe_path: str, overrides: list[str], nproc: int | None) -> list[str]:
    """`--nproc N` as recipe overrides: distributed.nproc=N, and strategy ddp where the recipe says none."""
    from qlora_kit.errors import UsageError
    from qlora_kit.recipe import load_recipe

    if nproc is None:
        return list(overrides)
    if nproc < 1:
        raise UsageError(f"--nproc: {nproc} must be at least 1")
    extra = [f"distributed.nproc={nproc}"]
    if nproc > 1 and load_recipe(recipe_path, overrides).distributed.strategy == "none":
        extra.append("distributed.strategy=ddp")
    return [*overrides, *extra]


def run(args) -> int:
    from qlora_kit.distributed.env import current

    dist = current()
    hint = " ".join(["qlora-kit train", args.recipe, *(f"--set {o}" for o in args.overrides),
                     *([f"--nproc {args.nproc}"] if args.nproc else []), "--resume"])
    if dist.supervised:
        hint = ""  # the supervisor prints the command to resume (its own flags, not the ones it gave torchrun)
    try:
        with event_log(args) as (log, warnings):  # bad input, --nproc included, becomes an error event too
            ctx = _context(args, log, warnings, hint, dist)
            overrides = nproc_overrides(args.recipe, args.overrides, args.nproc)
            launch = None if dist.active else _launch(args.recipe, overrides)
            if launch is not None:
                from qlora_kit.distributed.launch import supervise

                return supervise(launch, ctx.load(args.recipe, overrides), list(args.overrides))
            code = _train_here(ctx, args.recipe, overrides)
    except BaseException as exc:
        # No destroy_process_group on the way out: with a peer still waiting in a collective it can block, and
        # this process must exit for torchrun (and the supervisor) to see the failure. Exiting closes the sockets.
        if dist.active:
            _report_rank_error(dist, exc)
        raise
    if dist.active:
        from qlora_kit.distributed.sync import shutdown

        shutdown()
    return code


def _context(args, log, warnings, hint: str, dist):
    """The run's context from the flags (the recipe is parsed into it later)."""
    from qlora_kit.training.context import RunContext

    return RunContext(log, resume=args.resume, overwrite=args.overwrite, console=_console, resume_hint=hint,
                      stage_args=("--debug",) if getattr(args, "debug", False) else (), warnings=warnings,
                      dist=dist)


def _launch(recipe_path: str, overrides: list[str]):
    from qlora_kit.distributed.env import plan_launch
    from qlora_kit.recipe import load_recipe

    return plan_launch(load_recipe(recipe_path, overrides))


def _train_here(ctx, recipe: str, overrides: list[str]) -> int:
    """This process trains: alone, or as one worker of a distributed run."""
    from qlora_kit.api import run_training
    from qlora_kit.control import SignalCancel
    from qlora_kit.errors import EXIT_INTERRUPTED, EXIT_TERMINATED

    token, dist = ctx.cancel, ctx.dist

    def first_signal(name: str) -> None:
        print(f"{name}: saving a checkpoint after this step ({name} again stops at once)", file=sys.stderr,
              flush=True)

    # A worker that torchrun started directly gets each signal twice (the terminal's, then torchrun's own): only
    # qlora-kit's supervisor, or torchrun's SIGKILL after its grace period, stops it at once.
    with SignalCancel(token, on_first=first_signal, repeat_stops=not dist.active):
        result = run_training(recipe, overrides, ctx)
    if dist.active and token.cancelled and result.status != "complete":
        if dist.supervised:
            return 0  # every rank stopped cleanly; the supervisor turns the run's state into 130/143
        return EXIT_TERMINATED if token.reason == "SIGTERM" else EXIT_INTERRUPTED
    return result.exit_code


def _report_rank_error(dist, exc: BaseException) -> None:
    from qlora_kit.distributed.sync import report_error
    from qlora_kit.errors import QKError, first_line

    if isinstance(exc, QKError) and hasattr(exc, "raw"):  # rank 0 passing on another rank's error
        report_error(dist, exc.kind, exc.raw, exc.exit_code, rank=exc.rank)
    elif isinstance(exc, QKError):
        report_error(dist, exc.kind, str(exc), exc.exit_code)
    elif isinstance(exc, KeyboardInterrupt):
        report_error(dist, "runtime", "interrupted (stopped at once, without a checkpoint)", 130)
    elif isinstance(exc, Exception):
        report_error(dist, "runtime", f"{type(exc).__name__}: {first_line(exc)}", 1)


def _console(text: str) -> None:
    print(text, flush=True)
