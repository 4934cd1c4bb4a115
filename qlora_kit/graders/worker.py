"""The process a python grader's code runs in: `python -m qlora_kit.graders.worker`, JSON lines on stdin/stdout.

Protocol, one JSON object per line:
  parent -> worker, first: {"name", "function", "source" | "file", "parent_pid"}
  worker -> parent: {"ready": true}, or {"load_error": "Type: message"} and it exits
  parent -> worker: {"batch": [[sample, item], ...]}                       (a whole batch in one message)
  worker -> parent: one line per item, in order: {"score": float} | {"error": "Type: message"} | {"bad": "returned
                    ..."}; after an "error" or "bad" line the rest of that batch is skipped.
The parent times each item from the previous line (python.py), so a hang is pinned to its row.

Before the user's code loads: the network is off (creating a socket, connecting, resolving a name raise
PermissionError("network is off in python graders"); a guard against accidents, not a sandbox: `_socket` is
still there), no core dumps, fd 1 points at stderr so a print() in the grader cannot corrupt the protocol (which
writes to a private copy of the original stdout; stdin is /dev/null for the same reason), and a watchdog thread
exits the worker when its parent dies.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import types
from typing import Any, Callable

from qlora_kit.errors import first_line
from qlora_kit.graders.base import number_problem

NETWORK_OFF = "network is off in python graders"


def block_network() -> None:
    import socket

    def refuse(*args: Any, **kwargs: Any):
        raise PermissionError(NETWORK_OFF)

    class NoSocket(socket.socket):  # a subclass, so that `class SSLSocket(socket.socket)` still imports
        def __init__(self, *args: Any, **kwargs: Any):
            raise PermissionError(NETWORK_OFF)

    socket.socket = NoSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
        setattr(socket, name, refuse)


def limit_resources() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone (this process is reparented), even while the grader's code runs."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="qlora-kit-grader-watchdog", daemon=True).start()


def describe(exc: BaseException) -> str:
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load(config: dict) -> Callable:
    """The grading function from inline `source` or a `file`, in a fresh module named qk_python_grader."""
    module = types.ModuleType("qk_python_grader")
    sys.modules[module.__name__] = module
    if "file" in config:
        path = config["file"]
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # the file may import its neighbours
        module.__file__, origin = path, os.path.basename(path)
        with open(path, encoding="utf-8") as fh:
            code = compile(fh.read(), path, "exec")
    else:
        origin = "its source"
        code = compile(config["source"], f"<grader {config['name']}>", "exec")
    exec(code, module.__dict__)  # noqa: S102  (the user's grader, in this separate process)
    function = getattr(module, config["function"], None)
    if not callable(function):
        raise LookupError(f"no function {config['function']!r} in {origin}")
    return function


def grade(function: Callable, sample: dict, item: dict) -> dict:
    try:
        value = function(sample, item)
    except BaseException as exc:  # noqa: BLE001  (the user's code: whatever it raises is the answer)
        return {"error": describe(exc)}
    problem = number_problem(value)
    return {"bad": problem} if problem else {"score": float(value)}


def main() -> int:
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # input() in the grader reads nothing (and cannot eat a request)
    os.dup2(2, 1)  # print() in the grader goes to stderr
    os.close(null)
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115

    def send(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    config = json.loads(requests.readline())
    watch_parent(config["parent_pid"])
    limit_resources()
    block_network()
    try:
        function = load(config)
    except BaseException as exc:  # noqa: BLE001
        send({"load_error": describe(exc)})
        return 1
    send({"ready": True})
    for line in requests:
        for sample, item in json.loads(line)["batch"]:
            reply = grade(function, sample, item)
            send(reply)
            if "score" not in reply:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
