"""The python grader: OpenAI's `{"type": "python", "source": "def grade(sample, item) -> float: ..."}`, or ours,
`{"type": "python", "file": "graders/score.py", "function": "grade"}` (relative to the base directory).

The code runs in one long-lived worker process per grader (worker.py), started at the first batch and restarted
after a timeout or a crash; a whole batch goes to it in one message. `timeout` (seconds, default 10) applies to
each completion: the worker answers item by item, and the clock restarts at each answer, so a hang is reported on
the row that hung (the worker is then killed, with anything it started). Starting the worker and loading the
code get 30 s more. The worker runs in its own session (a Ctrl-C in the terminal does not reach it), with
CUDA_VISIBLE_DEVICES="" (it must not take GPU memory from training), the base directory as its working
directory (and so first on its sys.path: inline code may import modules there; a file grader's own folder is
on it too), and the network off. It dies with this process (a watchdog in the worker; `close()` and interpreter
exit stop it sooner).
"""

from __future__ import annotations

import ast
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from qlora_kit.graders.base import Batch, Grader
from qlora_kit.graders.spec import Spec

STARTUP_S = 30.0
ROOT = Path(__file__).resolve().parents[2]  # the directory holding the qlora_kit package
_TIMEOUT, _EOF = "timeout", "eof"


def defines(code: str, name: str) -> bool:
    """Whether the module's top level defines `name` (def, class, assignment or import), without running it."""
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
                return True
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def stop_process(proc: subprocess.Popen, kill: bool = False, owner: int | None = None) -> int | None:
    """Stop a worker: end of input and a short wait, or at once (`kill`): SIGKILL to its whole session. Nothing
    in a process other than `owner` (a fork of the parent that exits must not stop the parent's worker)."""
    if owner is not None and os.getpid() != owner:
        return None
    if proc.poll() is None and not kill:
        try:
            proc.stdin.close()
            proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            kill = True
    if proc.poll() is None and kill:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass
    return proc.returncode


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class PythonGrader(Grader):
    type = "python"

    def __init__(self, spec: Spec):
        super().__init__(spec.name)
        spec.allow("source", "file", "function", "timeout", "image_tag")  # image_tag: OpenAI's, unused here
        if ("source" in spec.raw) == ("file" in spec.raw):
            raise spec.error("give one of 'source' (code defining grade(sample, item)) or 'file' (a .py file)")
        self.function = spec.get("function", str, "grade")
        if "source" in spec.raw:
            code, origin, where = spec.get("source"), "source", {"source": spec.get("source")}
        else:
            path = spec.file("file")
            code, origin, where = path.read_text(encoding="utf-8"), f"file {spec.raw['file']}", {"file": str(path)}
        try:
            found = defines(code, self.function)
        except SyntaxError as exc:
            raise spec.error(f"{origin}: line {exc.lineno}: SyntaxError: {exc.msg}") from None
        if not found:
            raise spec.error(f"{origin} defines no function {self.function!r} at its top level; "
                             f"write def {self.function}(sample, item) -> float")
        self.timeout = spec.positive("timeout", 10.0)
        self.config = {"name": spec.name, "function": self.function, **where}
        self.cwd = spec.base_dir
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None

    def score(self, batch: Batch) -> list[float]:
        if not len(batch):
            return []
        payload = {"batch": [[sample, item] for sample, item in zip(batch.samples, batch.items)]}
        data = (json.dumps(payload, default=str) + "\n").encode()
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            try:
                self._proc.stdin.write(data)
                self._proc.stdin.flush()
            except OSError:
                raise self._died(batch.wheres[0]) from None
            return [self._result(where) for where in batch.wheres]

    def _result(self, where: str) -> float:
        reply = self._receive(self.timeout)
        if reply == _TIMEOUT:
            self.close(kill=True)
            raise self.fail_row(where, f"timed out after {self.timeout:g} s")
        if reply == _EOF:
            raise self._died(where)
        if "error" in reply:
            raise self.fail_row(where, f"raised {reply['error']}")
        if "bad" in reply:
            raise self.fail_row(where, reply["bad"])
        return float(reply["score"])

    def _died(self, where: str):
        code = self.close(kill=True)
        return self.fail_row(where, f"the worker process died ({_exit_text(code)}); it restarts on the next call")

    def _start(self) -> None:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": ""}
        self._proc = subprocess.Popen([sys.executable, "-m", "qlora_kit.graders.worker"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, cwd=self.cwd, env=env, start_new_session=True,
                                      bufsize=0)
        self._buffer = b""
        self._finalizer = weakref.finalize(self, stop_process, self._proc, True, os.getpid())  # and at exit
        config = {**self.config, "parent_pid": os.getpid()}
        self._proc.stdin.write((json.dumps(config) + "\n").encode())
        self._proc.stdin.flush()
        reply = self._receive(STARTUP_S + self.timeout)
        if isinstance(reply, dict) and reply.get("ready"):
            return
        code = self.close(kill=True)
        problem = (reply.get("load_error") if isinstance(reply, dict) else
                   f"the worker did not start in {STARTUP_S + self.timeout:g} s" if reply == _TIMEOUT else
                   f"the worker process died ({_exit_text(code)})")
        raise self.fail("", f"its code failed to load: {problem}")

    def _receive(self, seconds: float) -> Any:
        """The worker's next line as a dict, or _TIMEOUT, or _EOF (it died)."""
        deadline = time.monotonic() + seconds
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return _TIMEOUT
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return _EOF
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def close(self, kill: bool = False) -> int | None:
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
        return stop_process(proc, kill) if proc is not None else None
