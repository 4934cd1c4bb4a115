"""A child's whole process tree, for a parent that must leave nothing behind (the distributed supervisor: torchrun
and the workers it starts). Linux: reads /proc; a pid is remembered with its start time, so a reused pid is never
killed."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def die_with_parent() -> None:
    """In the child, before exec (Popen's preexec_fn): SIGTERM when the parent dies (Linux), so that a
    torchrun stops its workers."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def track_descendants(root: int, tracked: dict[int, str]) -> None:
    """Remember every descendant of `root` (pid -> its start time, so a reused pid is never killed)."""
    stack = [root]
    while stack:
        pid = stack.pop()
        children = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                children += (task / "children").read_text().split()
            except OSError:
                continue
        for child in map(int, children):
            if child not in tracked:
                start = start_time(child)
                if start:
                    tracked[child] = start
            stack.append(child)


def start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def kill_tracked(tracked: dict[int, str], sig) -> None:
    """Send `sig` to every tracked process still alive (and forget those gone)."""
    for pid, start in list(tracked.items()):
        if start_time(pid) != start:
            tracked.pop(pid, None)
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            tracked.pop(pid, None)
