"""Who this process is in a distributed run, and what launch a recipe asks for. Imports no torch (the launcher's
decisions happen before any heavy import, so bad input fails in milliseconds).

torchrun (and `accelerate launch`, which runs it) sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK
(the node), MASTER_ADDR and MASTER_PORT for each worker; a process without them is a single process (rank 0 of 1).
QLORA_KIT_DIST_CONTROL is set only by qlora-kit's own supervisor: the directory through which it asks its local
workers to stop and they report their errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qlora_kit.errors import UsageError

CONTROL_ENV = "QLORA_KIT_DIST_CONTROL"


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    control: Path | None = None  # set when qlora-kit's supervisor launched this worker

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def supervised(self) -> bool:
        return self.control is not None


def current(environ=None) -> DistEnv:
    """This process's place in the run, from the launcher's variables; a malformed one is a one-line error."""
    env = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        value = env.get(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"environment variable {name}={value!r} is not an integer; it is set by the "
                             "launcher (torchrun, accelerate launch): unset it for a single-process run") from None

    world = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process of the run; they are set "
                         "by the launcher (torchrun, accelerate launch)")
    local_world = number("LOCAL_WORLD_SIZE", world)
    control = env.get(CONTROL_ENV)
    return DistEnv(rank=rank, world_size=world, local_rank=number("LOCAL_RANK", rank % max(local_world, 1)),
                   local_world_size=local_world, node_rank=number("GROUP_RANK", 0),
                   control=Path(control) if control else None)


@dataclass(frozen=True)
class Launch:
    """What the supervisor starts: torchrun with these numbers (this machine's share of the run)."""

    strategy: str  # ddp | fsdp
    nproc: int  # processes on this machine
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def resolve_nproc(nproc, device: str = "auto") -> int:
    """distributed.nproc auto: one process per visible GPU, 1 without one (imports torch only to count GPUs)."""
    if nproc != "auto":
        return int(nproc)
    if device == "cpu":
        return 1
    import torch

    return max(torch.cuda.device_count(), 1)


def plan_launch(recipe) -> Launch | None:
    """The launch a recipe asks for from a process no launcher started; None: train in this process."""
    d = recipe.distributed
    if d.strategy == "none":
        return None
    nproc = resolve_nproc(d.nproc, recipe.train.device)
    if d.strategy == "fsdp":
        from qlora_kit.training.device import detect_device

        check_fsdp_device("fsdp", detect_device(recipe.train.device))
    if nproc * d.nnodes == 1:
        if d.strategy == "fsdp":
            raise UsageError("distributed.strategy fsdp needs at least 2 processes, and nproc auto found one (no "
                             "second GPU is visible); set distributed.nproc (or --nproc) to 2 or more, or use "
                             "strategy: none")
        return None  # ddp on one process is plain training
    return Launch(d.strategy, nproc, d.nnodes, d.node_rank, d.master_addr, d.master_port)


def worker_strategy(recipe, env: DistEnv) -> str:
    """The strategy a worker trains with: the recipe's, or ddp when a launcher started several processes for a
    recipe that says none (`torchrun --nproc-per-node 2 -m qlora_kit train RECIPE` means data parallel)."""
    if not env.active:
        return "none"
    return recipe.distributed.strategy if recipe.distributed.strategy != "none" else "ddp"


def topology(recipe, env: DistEnv) -> dict:
    """What run.json and the run_start event record about the processes: world size, strategy and the global
    batch (rows per optimizer step over all processes: batch_size x grad_accum x world_size). `recipe` is resolved
    (no "auto" left in train.batch_size or train.grad_accum)."""
    t = recipe.train
    return {"world_size": env.world_size, "strategy": worker_strategy(recipe, env),
            "global_batch_size": int(t.batch_size) * int(t.grad_accum) * env.world_size}


def recorded_section(recipe, env: DistEnv) -> dict:
    """The `distributed` section a run directory records: what was trained (strategy, processes per machine,
    machines). Where this launch happened (node_rank, master_addr, master_port) is left at its default, so a
    resume may use another port or address; run.json keeps the world size, which resume checks."""
    nnodes = max(env.world_size // max(env.local_world_size, 1), 1)
    return {"strategy": worker_strategy(recipe, env), "nproc": env.local_world_size if env.active else 1,
            "nnodes": nnodes if env.active else 1}


def check_fsdp_device(strategy: str, device: str) -> None:
    """FSDP-QLoRA needs CUDA GPUs: accelerate (1.15) turns FSDP on only for GPU-class devices; on CPU its Trainer
    would quietly train DDP instead (each process a full copy), which is not what the recipe asked for."""
    if strategy == "fsdp" and device != "cuda":
        raise UsageError("distributed.strategy fsdp needs CUDA GPUs (accelerate shards with FSDP only on GPU-class "
                         f"devices; on {device} it would train DDP instead); use distributed.strategy: ddp here")
