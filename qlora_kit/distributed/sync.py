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


def report_error(env: DistEnv, kind: str, message: str, exit_code: int, rank: int | None = None) -> None:
    """Leave this rank's one-line error where its supervisor reads it (the supervisor picks the first), and in
    the rendezvous store for rank 0. `rank`: the rank the error came from, when rank 0 reports another's."""
    record = {"rank": env.rank if rank is None else rank, "t": time.time(), "kind": kind, "message": message,
              "exit_code": exit_code}
    if env.active and not any(m in message for m in PEER_GONE):
        share_error(env, record)
    if env.control is None:
        return
    path = Path(env.control) / f"rank-{env.rank}.json"
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # the control dir is gone (the supervisor was killed); the error still reaches stderr


# A rank's error also goes to the rendezvous store on machine 0 (torchrun's TCPStore at MASTER_ADDR:MASTER_PORT),
# so rank 0 can report it when that rank runs on another machine, whose supervisor rank 0 never hears from.
_STORE_KEY = "qlora_kit/rank_error/{rank}"
# What a rank's collective says when a peer went away: a consequence, not the cause.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "pair.cc", "NCCL communicator",
             "another rank", "ProcessGroupGloo", "ProcessGroupNCCL")


def _store():
    import datetime
    import os

    import torch.distributed as dist

    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    return dist.TCPStore(addr, int(port), is_master=False, timeout=datetime.timedelta(seconds=5),
                         wait_for_workers=False)


def share_error(env: DistEnv, record: dict) -> None:
    """Publish this rank's error to the rendezvous store (best effort: the store may be gone already)."""
    try:
        store = _store()
        if store is not None:
            store.set(_STORE_KEY.format(rank=env.rank), json.dumps(record))
    except Exception:  # noqa: BLE001  (a failing rank must still exit promptly)
        pass


def peer_error(env: DistEnv) -> dict | None:
    """The first error another rank published, if any: what rank 0 reports instead of 'connection closed'."""
    try:
        store = _store()
        if store is None:
            return None
        found = []
        for rank in range(env.world_size):
            key = _STORE_KEY.format(rank=rank)
            if rank != env.rank and store.check([key]):
                found.append(json.loads(store.get(key)))
    except Exception:  # noqa: BLE001
        return None
    found = [r for r in found if not any(m in r["message"] for m in PEER_GONE)]
    return min(found, key=lambda r: r["t"]) if found else None


def peer_cause(env: DistEnv, error):
    """Rank 0's error when it only says a peer went away: the error that peer published instead (with `rank` and
    `raw` set), else `error` itself."""
    from qlora_kit.errors import QKError, error_for_kind

    if not (env.active and env.is_main and isinstance(error, QKError)):
        return error
    if not any(m in str(error) for m in PEER_GONE):
        return error
    peer = peer_error(env)
    if peer is None:
        return error
    cause = error_for_kind(peer["kind"], f"rank {peer['rank']}: {peer['message']}")
    cause.exit_code, cause.rank, cause.raw = peer["exit_code"], peer["rank"], peer["message"]
    return cause
