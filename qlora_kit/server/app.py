"""The HTTP API (FastAPI). Routes are thin: records come from `store`, the queue from `jobs`, run state from
`views`, live events from `stream`, and every recipe passes `recipes.prepare` (the server's refusals, then the
same checks as `qlora-kit validate`). The OpenAPI schema is served at /openapi.json (no docs page: it would load
scripts from the network)."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from qlora_kit import __version__
from qlora_kit.errors import QKError, UsageError
from qlora_kit.recipe.options import PlanOptions, to_argv
from qlora_kit.server.dry_run import dry_run
from qlora_kit.server.jobs import Scheduler, recover, resume_mode
from qlora_kit.server.middleware import BearerAuth, BodyLimit
from qlora_kit.server.openai import register as register_openai
from qlora_kit.server.recipes import RecipeRequest, prepare, problems_of
from qlora_kit.server.security import MAX_BODY_BYTES, Confiner, Refused
from qlora_kit.server.store import ACTIVE, JobStore
from qlora_kit.server.stream import HEARTBEAT_S, POLL_S, event_stream
from qlora_kit.server.views import artifacts, job_view


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


class PlanRequest(RecipeRequest, PlanOptions):
    """A recipe and the plan stage's options (recipe/options.py PlanOptions), side by side in one JSON object."""


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
        options = PlanOptions.model_validate(body.model_dump(include=set(PlanOptions.model_fields)))
        return dry_run(["plan"], recipe, [*to_argv(options), "--json"], ctx.config.root)

    @app.post("/v1/data/check")
    def data_check(body: RecipeRequest) -> dict[str, Any]:
        recipe, _ = ctx.prepare(body)
        return dry_run(["data", "check"], recipe, ["--json"], ctx.config.root)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "running": ctx.scheduler.running_id, "queued": len(ctx.store.queued())}

    @app.get("/v1/version")
    def version() -> dict[str, Any]:
        return {"version": __version__, "events_schema_version": 2}


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
