"""A real `qlora-kit server` on 127.0.0.1 for the server tests: started as a subprocess, driven with httpx."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from conftest import ROOT

HOST = "127.0.0.1"
TINY = {"model": {"name": "builtin:tiny-llama", "max_seq_length": 128},
        "data": {"path": "builtin:tiny-chat", "chat_template": "chatml"},
        "lora": {"r": 16, "alpha": 32},
        "train": {"max_steps": 2, "lr": 3e-3, "batch_size": 8, "logging_steps": 1, "save_steps": 1000}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, *flags: str, port: int | None = None, token: str | None = None):
        self.root, self.flags, self.port, self.token = Path(root), flags, port or free_port(), token
        self.url = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.root.parent / f"server-{self.port}.log"

    def start(self, timeout: float = 120) -> "Server":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "qlora_kit", "server", "--host", HOST, "--port",
                                          str(self.port), "--root", str(self.root), *self.flags],
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/v1/health", headers=self.headers(), timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not answer within {timeout}s: {self.log.read_text()[-3000:]}")

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=60)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def sse(client: httpx.Client, job_id: str, last_event_id: int | None = None, until=None,
        timeout: float = 900) -> list[dict]:
    """The job's server-sent events as (id, event, data) checked dicts, until the stream ends or `until(event)`."""
    from qlora_kit.server.client import sse_messages

    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    out = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for message in sse_messages(response.iter_lines()):
            if "data" not in message:
                continue
            event = json.loads(message["data"])
            assert int(message["id"]) == event["seq"] and message["event"] == event["event"]
            out.append(event)
            if (until and until(event)) or time.monotonic() > deadline:
                break
    return out


def wait_status(client: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not {statuses} after {timeout}s: {job}")


def recipe_dict(path: Path) -> dict:
    """A recipe written by conftest.write_recipe, as the JSON object a client sends (the server picks output.dir)."""
    recipe = yaml.safe_load(path.read_text())
    recipe.pop("output", None)
    return recipe
