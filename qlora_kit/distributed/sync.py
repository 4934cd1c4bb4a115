"""The collective pieces a training process needs when several run together (imports torch: workers only).

A cancel must be agreed on by every rank at the same step boundary: a rank that stopped alone would leave the
others waiting in the next gradient all-reduce forever. One tiny all-reduce per step costs well under a
millisecond (gloo, loopback) next to a training step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from qlora_kit.distributed.env import DistEnv

STOP_NAME = "STOP"  # in the supervisor's control directory; holds the reason (SIGINT, SIGTERM)


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on at least one (a collective: every rank must call it)."""
    if not _initialized():
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (a collective)."""
    if not _initialized():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


def supervisor_stop(env: DistEnv) -> str | None:
    """The reason the supervisor asked this machine's workers to stop (SIGINT, SIGTERM), or None."""
    if env.control is None:
        return None
    try:
        return (env.control / STOP_NAME).read_text(encoding="utf-8").strip() or "SIGINT"
    except OSError:
        return None


def report_error(env: DistEnv, kind: str, message: str, exit_code: int) -> None:
    """Leave this rank's one-line error where its supervisor reads it (the supervisor picks the first)."""
    if env.control is None:
        return
    record = {"rank": env.rank, "t": time.time(), "kind": kind, "message": message, "exit_code": exit_code}
    path = Path(env.control) / f"rank-{env.rank}.json"
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # the control dir is gone (the supervisor was killed); the error still reaches stderr
