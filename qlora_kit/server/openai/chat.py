"""POST /v1/chat/completions: answered by `qlora-kit serve GGUF` child processes, never in the server's process
(a native crash in llama.cpp would take the job server and its queue down with it; see qlora_kit/native/).

One child per model, on a free loopback port, started on the first request for it (bounded wait until it
answers), kept while it is used and stopped after `idle_s` without requests, when its model is deleted, and when
the server stops. Each child's pid is written under ROOT/.qlora-kit-server/chat/ so a server that was killed
(SIGKILL: no chance to stop them) stops its leftover children when it starts again. Requests and responses are
passed through unchanged (streamed chunk by chunk for `stream: true`), except that `model` is checked here.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from qlora_kit.server.jobs import _proc_start
from qlora_kit.server.openai.common import state_dir
from qlora_kit.server.openai.errors import OpenAIError

START_TIMEOUT_S = 180.0
IDLE_S = 600.0


class _Child:
    def __init__(self, proc: subprocess.Popen, port: int, pid_file: Path):
        self.proc, self.port, self.pid_file = proc, port, pid_file
        self.url = f"http://127.0.0.1:{port}"
        self.last_used, self.users = time.monotonic(), 0


class ChatPool:
    def __init__(self, root: Path, idle_s: float = IDLE_S):
        self.dir = state_dir(root, "chat")
        self.root, self.idle_s = Path(root), idle_s
        self.children: dict[str, _Child] = {}
        self.lock = threading.Lock()
        self.starting: dict[str, threading.Lock] = {}
        self._stop = threading.Event()
        _stop_leftovers(self.dir)
        threading.Thread(target=self._reap, name="qlora-kit-chat-reaper", daemon=True).start()

    def acquire(self, name: str, gguf: Path) -> _Child:
        """The running child for `name` (started now if needed), marked in use until `release`."""
        with self.lock:
            gate = self.starting.setdefault(name, threading.Lock())
        with gate:
            with self.lock:
                child = self.children.get(name)
                if child is not None and child.proc.poll() is None:
                    child.users += 1
                    return child
            child = self._start(name, gguf)
            with self.lock:
                self.children[name] = child
                child.users += 1
            return child

    def release(self, child: _Child) -> None:
        with self.lock:
            child.users -= 1
            child.last_used = time.monotonic()

    def stop(self, name: str) -> None:
        with self.lock:
            child = self.children.pop(name, None)
        if child is not None:
            _terminate(child)

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            children, self.children = list(self.children.values()), {}
        for child in children:
            _terminate(child)

    def _start(self, name: str, gguf: Path) -> _Child:
        port = _free_port()
        key = hashlib.sha256(name.encode()).hexdigest()[:16]
        log = open(self.dir / f"{key}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "qlora_kit", "serve", str(gguf), "--port", str(port),
                                 "--name", name], cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        child = _Child(proc, port, self.dir / f"{key}.json")
        child.pid_file.write_text(json.dumps({"pid": proc.pid, "start": _proc_start(proc.pid), "model": name}))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                child.pid_file.unlink(missing_ok=True)
                tail = (self.dir / f"{key}.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise OpenAIError(500, f"the llama.cpp server for {name!r} exited ({proc.returncode}): "
                                       + " | ".join(tail), "model", "model_failed_to_load")
            try:
                if httpx.get(f"{child.url}/v1/models", timeout=2).status_code == 200:
                    return child
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        _terminate(child)
        raise OpenAIError(500, f"the llama.cpp server for {name!r} did not answer in {START_TIMEOUT_S:.0f} s",
                          "model", "model_failed_to_load")

    def _reap(self) -> None:
        while not self._stop.wait(min(10.0, self.idle_s)):
            now = time.monotonic()
            with self.lock:
                idle = [n for n, c in self.children.items() if c.users == 0 and now - c.last_used > self.idle_s]
            for name in idle:
                self.stop(name)


def _terminate(child: _Child) -> None:
    if child.proc.poll() is None:
        child.proc.terminate()
        try:
            child.proc.wait(15)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(15)
    child.pid_file.unlink(missing_ok=True)


def _stop_leftovers(directory: Path) -> None:
    """Children of a server that was killed: stopped if their pid still is the process we started."""
    for path in directory.glob("*.json"):
        try:
            info = json.loads(path.read_text())
            if info.get("start") and _proc_start(int(info["pid"])) == info["start"]:
                os.kill(int(info["pid"]), signal.SIGTERM)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        path.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def proxy(pool: ChatPool, child: _Child, body: dict):
    """Forward the request; streamed answers pass through chunk by chunk. Releases the child when done."""
    from fastapi.responses import JSONResponse, StreamingResponse

    # Plain HTTP to a loopback child: verify=False skips loading the CA bundle, 40-50 ms of every request's
    # latency (benchmarks/RESULTS.md, "OpenAI-compatible routes: job start and chat latency"); there is no TLS to verify.
    client = httpx.AsyncClient(base_url=child.url, timeout=httpx.Timeout(600.0, connect=10.0), verify=False)
    try:
        response = await client.send(client.build_request("POST", "/v1/chat/completions", json=body), stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        pool.release(child)
        raise OpenAIError(502, f"the llama.cpp server for {body['model']!r} did not answer: {exc}") from None
    if not body.get("stream") or response.status_code != 200:
        try:
            content = await response.aread()
        finally:
            await response.aclose()
            await client.aclose()
            pool.release(child)
        try:
            data = json.loads(content)
        except ValueError:
            data = {"error": {"message": content.decode(errors="replace")[:2000], "type": "server_error"}}
        return JSONResponse(data, status_code=response.status_code)

    async def passthrough():
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()
            await client.aclose()
            pool.release(child)

    return StreamingResponse(passthrough(), media_type=response.headers.get("content-type", "text/event-stream"),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
