"""The HTTP API (FastAPI). Routes are thin: records come from `store`, the queue from `jobs`, run state from
`views`, live events from `stream`, and every recipe passes `recipes.prepare` (the server's refusals, then the
same checks as `qlora-kit validate`). The OpenAPI schema is served at /openapi.json (no docs page: it would load
scripts from the network)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from qlora_kit import __version__
from qlora_kit.errors import QKError, UsageError
from qlora_kit.server.jobs import Scheduler, recover, resume_mode
from qlora_kit.server.openai import register as register_openai
from qlora_kit.server.recipes import RecipeRequest, prepare, problems_of, write_temp_recipe
from qlora_kit.server.security import MAX_BODY_BYTES, Confiner, Refused, token_matches
from qlora_kit.server.store import ACTIVE, JobStore
from qlora_kit.server.stream import HEARTBEAT_S, POLL_S, event_stream
from qlora_kit.server.views import artifacts, job_view

DRY_RUN_TIMEOUT_S = 600


@dataclass
class ServerConfig:
    root: Path
    token: str | None = None
    allow_remote_code: bool = False
    data_dirs: list[Path] = field(default_factory=list)
    max_body: int = MAX_BODY_BYTES
    heartbeat_s: float = HEARTBEAT_S
    poll_s: float = POLL_S
    plugins: bool = True
    models: Path | None = None  # the OpenAI routes' model table (YAML); None: builtin models and shipped recipes
    max_file: int = 512 << 20  # largest upload to POST /v1/files
    max_files: int = 1000  # most files kept
    chat_idle_s: float = 600.0  # a chat model's llama.cpp child stops after this long without requests


class JobRequest(RecipeRequest):
    resume: bool = False  # continue an existing run directory (under the root) from its latest checkpoint


class PlanRequest(RecipeRequest):
    gpu_mem: str | None = None
    device: str | None = None
    backend: Literal["unsloth", "hf"] | None = None
    seq_len: int | None = None
    batch_size: int | None = None


def create_app(config: ServerConfig) -> FastAPI:
    config.root = Path(config.root).resolve()
    store = JobStore(config.root)
    recover(store)
    ctx = _Context(config, store, Scheduler(store, plugins=config.plugins), Confiner(config.root, config.data_dirs))

    async def lifespan(app):
        ctx.scheduler.start()
        yield
        ctx.scheduler.stop()
        app.state.openai.close()

    app = FastAPI(title="qlora-kit job server", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=config.max_body, uploads={"/v1/files": config.max_file + (64 << 10)})
    if config.token:
        app.add_middleware(BearerAuth, token=config.token)  # added last: runs first, before any body is read
    app.state.store, app.state.scheduler = store, ctx.scheduler
    _errors(app)
    _job_routes(app, ctx)
    _control_routes(app, ctx)
    _service_routes(app, ctx)
    app.state.openai = register_openai(app, ctx)  # /v1/files, /v1/fine_tuning, /v1/models, /v1/chat
    return app


@dataclass
class _Context:
    config: ServerConfig
    store: JobStore
    scheduler: Scheduler
    confiner: Confiner
    lock: threading.Lock = field(default_factory=threading.Lock)  # submit and delete: run-dir ownership

    def get(self, job_id: str):
        record = self.store.get(job_id)
        if record is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return record

    def prepare(self, body: RecipeRequest):
        return prepare(body, self.confiner, self.config.allow_remote_code)


def _job_routes(app: FastAPI, ctx: _Context) -> None:
    @app.post("/v1/jobs", status_code=201)
    def submit(body: JobRequest) -> dict[str, Any]:
        recipe, named = ctx.prepare(body)
        job_id = ctx.store.new_id()
        if not named:
            recipe.output.name = job_id
        run_dir = Path(recipe.output.dir) / recipe.output.name
        with ctx.lock:
            owner = ctx.store.claims(run_dir)
            if owner is not None:
                raise HTTPException(409, f"{run_dir} belongs to job {owner.id} ({owner.status}); "
                                         f"POST /v1/jobs/{owner.id}/resume continues it")
            mode = "fresh"
            if body.resume:
                mode = resume_mode(run_dir)
                if mode != "resume":
                    raise HTTPException(409, f"{run_dir}: no checkpoint to resume from")
            elif run_dir.exists() and any(run_dir.iterdir()):
                raise HTTPException(409, f"{run_dir} already exists; send resume: true to continue it, or "
                                         "choose another output.name")
            from qlora_kit.recipe import dump_recipe

            ctx.store.add(job_id, run_dir, dump_recipe(recipe), mode)
        ctx.scheduler.notify()
        return {"id": job_id, "run_dir": str(run_dir), "queue_position": ctx.store.queue_position(job_id)}

    @app.get("/v1/jobs")
    def list_jobs() -> list[dict[str, Any]]:
        return [job_view(r, ctx.store) for r in ctx.store.all()]

    @app.get("/v1/jobs/{job_id}")
    def show(job_id: str) -> dict[str, Any]:
        return job_view(ctx.get(job_id), ctx.store)


def _control_routes(app: FastAPI, ctx: _Context) -> None:
    @app.get("/v1/jobs/{job_id}/artifacts/{name:path}")
    def artifact(job_id: str, name: str):
        record = ctx.get(job_id)
        listed = {a["name"]: a for a in artifacts(record)}
        if name not in listed:
            raise HTTPException(404, f"job {job_id} has no artifact {name!r}; listed: {', '.join(listed) or 'none'}")
        path = ctx.confiner.path(str(Path(record.run_dir) / name), "artifact")
        if not ctx.confiner.inside(path, Path(record.run_dir)) or not path.is_file():
            raise HTTPException(404, f"job {job_id} has no artifact {name!r}")
        return FileResponse(path, filename=path.name, headers={"X-Content-SHA256": listed[name]["sha256"]})

    @app.get("/v1/jobs/{job_id}/events")
    def events(job_id: str, last_event_id: str | None = Header(None)):
        record = ctx.get(job_id)
        after = _event_id(last_event_id)
        active = lambda: (ctx.store.get(job_id) or record).status in ACTIVE  # noqa: E731
        stream = event_stream(Path(record.run_dir) / "events.jsonl", after, active, ctx.config.poll_s,
                              ctx.config.heartbeat_s)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202)
    def cancel(job_id: str) -> dict[str, Any]:
        record = ctx.get(job_id)
        if record.status not in ACTIVE:
            raise HTTPException(409, f"job {job_id} is {record.status}; only queued or running jobs can be cancelled")
        return {"id": job_id, "status": ctx.scheduler.cancel(job_id)}

    @app.post("/v1/jobs/{job_id}/resume", status_code=202)
    def resume(job_id: str) -> dict[str, Any]:
        record = ctx.get(job_id)
        if record.status not in ("interrupted", "failed"):
            raise HTTPException(409, f"job {job_id} is {record.status}; only interrupted or failed jobs resume")
        mode = resume_mode(Path(record.run_dir))
        ctx.store.requeue(job_id, mode)
        ctx.scheduler.notify()
        return {"id": job_id, "status": "queued", "mode": mode, "queue_position": ctx.store.queue_position(job_id)}

    @app.delete("/v1/jobs/{job_id}")
    def delete(job_id: str, purge: bool = False) -> dict[str, Any]:
        with ctx.lock, ctx.scheduler.lock:  # the queue cannot start it meanwhile
            record = ctx.get(job_id)
            if record.status == "running":
                raise HTTPException(409, f"job {job_id} is running; cancel it first")
            run_dir = Path(record.run_dir)
            ctx.store.remove(job_id)
        purged = False
        root = ctx.config.root
        if purge and run_dir.exists() and ctx.confiner.inside(run_dir, root) and run_dir.resolve() != root:
            shutil.rmtree(run_dir)
            purged = True
        return {"id": job_id, "deleted": True, "purged": purged}


def _service_routes(app: FastAPI, ctx: _Context) -> None:
    @app.post("/v1/validate")
    def validate(body: RecipeRequest) -> dict[str, Any]:
        recipe, _ = ctx.prepare(body)
        return {"valid": True, "recipe": recipe.model_dump(mode="json")}

    @app.post("/v1/plan")
    def plan(body: PlanRequest) -> dict[str, Any]:
        recipe, _ = ctx.prepare(body)
        flags = []
        for key in ("gpu_mem", "device", "backend", "seq_len", "batch_size"):
            value = getattr(body, key)
            flags += [f"--{key.replace('_', '-')}", str(value)] if value is not None else []
        return _dry_run(["plan"], recipe, [*flags, "--json"], ctx.config.root)

    @app.post("/v1/data/check")
    def data_check(body: RecipeRequest) -> dict[str, Any]:
        recipe, _ = ctx.prepare(body)
        return _dry_run(["data", "check"], recipe, ["--json"], ctx.config.root)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "running": ctx.scheduler.running_id, "queued": len(ctx.store.queued())}

    @app.get("/v1/version")
    def version() -> dict[str, Any]:
        return {"version": __version__, "events_schema_version": 2}


class BearerAuth:
    """Every request (the OpenAPI schema and unknown paths too) needs `Authorization: Bearer TOKEN`."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not token_matches(header, self.token):
                return await _send_json(send, 401, "a bearer token is required: Authorization: Bearer TOKEN",
                                        [(b"www-authenticate", b"Bearer")], code="invalid_api_key")
        return await self.app(scope, receive, send)


async def _send_json(send, status: int, detail: str, headers: list | None = None, code: str | None = None) -> None:
    """`detail` for /v1/jobs clients, and the same in OpenAI's `error` shape for OpenAI clients."""
    error = {"message": detail, "type": "invalid_request_error", "param": None, "code": code}
    body = json.dumps({"detail": detail, "error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _event_id(value: str | None) -> int:
    if value is None or not value.strip():
        return 0
    try:
        return max(0, int(value))
    except ValueError:
        raise HTTPException(400, f"Last-Event-ID: {value!r} is not an event seq (an integer)") from None


def _errors(app: FastAPI) -> None:
    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(QKError)
    async def bad_input(request: Request, exc: QKError):
        if isinstance(exc, UsageError):
            return JSONResponse({"detail": {"message": str(exc), "problems": problems_of(exc)}}, status_code=422)
        return JSONResponse({"detail": str(exc)}, status_code=500)


def _dry_run(command: list[str], recipe, flags: list[str], cwd: Path) -> dict[str, Any]:
    """A dry-run command through the CLI in a child process (it may load a tokenizer or torch, which the server
    never imports): its --json output, or its one-line error as a 422."""
    with tempfile.TemporaryDirectory(prefix="qlora-kit-server-") as tmp:
        path = write_temp_recipe(recipe, Path(tmp))
        proc = subprocess.run([sys.executable, "-m", "qlora_kit", *command, str(path), *flags], cwd=cwd,
                              capture_output=True, text=True, timeout=DRY_RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
    report = None
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        pass
    if proc.returncode == 0 and report is not None:
        return report
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    problems = [line.strip()[2:] for line in lines if line.startswith("  - ")]
    message = next((line.split("error: ", 1)[1] for line in lines if line.startswith("qlora-kit: error: ")),
                   lines[-1] if lines else f"exit code {proc.returncode}")
    status = 422 if proc.returncode == 2 else 500
    raise HTTPException(status, {"message": message, "problems": problems or [message], "report": report})


class BodyLimit:
    """Refuses request bodies over `limit` bytes (`uploads[path]` for POSTs to an upload path) with 413: by
    Content-Length before reading anything, and by counting while reading for bodies sent without one (chunked)."""

    def __init__(self, app, limit: int, uploads: dict[str, int] | None = None):
        self.app, self.default, self.uploads = app, limit, uploads or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.uploads.get(scope["path"], self.default) if scope["method"] == "POST" else self.default
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await self._too_large(send, limit)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await self._too_large(send, limit)

    async def _too_large(self, send, limit: int):
        await _send_json(send, 413, f"request body larger than {limit} bytes", [(b"connection", b"close")],
                         code="request_too_large")


class _TooLarge(Exception):
    pass
