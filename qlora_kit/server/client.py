"""`qk.Client(url, token=None)`: the job server's API for Python callers (httpx; no FastAPI, no torch).

    client = qk.Client("http://127.0.0.1:8765")
    job = client.submit({"model": {...}, "data": {...}}, overrides={"train.max_steps": 20})
    for event in client.events(job["id"]):        # dicts of the event schema, live; ends when the job stops
        print(event["event"], event.get("loss"))
    client.download(job["id"], "adapter/adapter_model.safetensors", "adapter.safetensors")

An error answer raises `ServerError` (a `qk.QKError`) with the HTTP status and the server's detail; a 422 for a
bad recipe carries the same problem list as `qlora-kit validate` in `.problems`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

from qlora_kit.errors import QKError


class ServerError(QKError):
    def __init__(self, status: int, detail: Any):
        self.status, self.detail = status, detail
        self.problems = detail.get("problems", []) if isinstance(detail, dict) else []
        message = detail.get("message") if isinstance(detail, dict) else detail
        super().__init__(f"HTTP {status}: {message}")


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8765", token: str | None = None, timeout: float = 60.0):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- jobs --------------------------------------------------------------------------------------------------
    def submit(self, recipe: dict | str, overrides: dict | list | None = None, resume: bool = False) -> dict:
        """Queue a job: `recipe` is a recipe dict or the path of a recipe file under the server root."""
        return self._call("POST", "/v1/jobs", json={"recipe": recipe, "overrides": overrides, "resume": resume})

    def jobs(self) -> list[dict]:
        return self._call("GET", "/v1/jobs")

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def resume(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/jobs/{job_id}/resume")

    def delete(self, job_id: str, purge: bool = False) -> dict:
        return self._call("DELETE", f"/v1/jobs/{job_id}", params={"purge": str(purge).lower()})

    def wait(self, job_id: str, timeout: float = 3600.0, poll_s: float = 0.5) -> dict:
        """Poll until the job is neither queued nor running; raises TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] not in ("queued", "running"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f}s")
            time.sleep(poll_s)

    def events(self, job_id: str, last_event_id: int | None = None) -> Iterator[dict]:
        """The job's events (server-sent), after `last_event_id` if given, until the job stops."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise ServerError(response.status_code, _detail(response))
            for message in sse_messages(response.iter_lines()):
                if "data" in message:
                    yield json.loads(message["data"])

    def download(self, job_id: str, name: str, dest: str | Path) -> Path:
        """Save an artifact (its `name` as listed in the job's artifacts) to `dest`."""
        dest = Path(dest)
        with self._http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
            if response.status_code >= 400:
                response.read()
                raise ServerError(response.status_code, _detail(response))
            with open(dest, "wb") as fh:
                for block in response.iter_bytes():
                    fh.write(block)
        return dest

    # --- dry runs and service -----------------------------------------------------------------------------------
    def validate(self, recipe: dict | str, overrides: dict | list | None = None) -> dict:
        return self._call("POST", "/v1/validate", json={"recipe": recipe, "overrides": overrides})

    def plan(self, recipe: dict | str, overrides: dict | list | None = None, **options: Any) -> dict:
        return self._call("POST", "/v1/plan", json={"recipe": recipe, "overrides": overrides, **options})

    def data_check(self, recipe: dict | str, overrides: dict | list | None = None) -> dict:
        return self._call("POST", "/v1/data/check", json={"recipe": recipe, "overrides": overrides})

    def health(self) -> dict:
        return self._call("GET", "/v1/health")

    def version(self) -> dict:
        return self._call("GET", "/v1/version")

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ServerError(response.status_code, _detail(response))
        return response.json()


def _detail(response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except ValueError:
        return response.text


def sse_messages(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Server-sent event messages (dicts of their fields: id, event, data) from a stream's lines; comment lines
    (heartbeats) are skipped. Multi-line data fields are joined with newlines, as the SSE standard says."""
    message: dict[str, str] = {}
    for line in lines:
        if not line:
            if message:
                yield message
            message = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        message[name] = f"{message[name]}\n{value}" if name == "data" and name in message else value
    if message:
        yield message
