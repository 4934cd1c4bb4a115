"""The fine-tuning, models and chat routes (files are in `files`). Handlers are thin: the request is checked and
mapped by `mapping`, the job goes into the server's one JobStore/Scheduler, objects are rendered by `jobs` and
`events`, chat goes to a `chat` child process."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from qlora_kit.server.openai import events as ev
from qlora_kit.server.openai.common import new_id, page
from qlora_kit.server.openai.errors import OpenAIError, bad_request, not_found
from qlora_kit.server.openai.jobs import fine_tuned_name, job_object, new_record, status_of
from qlora_kit.server.openai.mapping import check_request, map_recipe


async def json_body(request: Request):
    try:
        return json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise bad_request(f"the body is not JSON: {exc}") from None


def create_job(api, body) -> dict:
    from qlora_kit.errors import RecipeError, UsageError
    from qlora_kit.recipe import dump_recipe
    from qlora_kit.server.recipes import RecipeRequest
    from qlora_kit.server.security import Refused

    request = check_request(body)
    api.table.resolve(request["model"])
    method = request["method_type"]
    train = api.usable_file(request["training_file"], "training_file", method)
    valid = api.usable_file(request["validation_file"], "validation_file", method) if request.get(
        "validation_file") else None
    job_id = new_id("ftjob")
    raw = map_recipe(api.table.base_recipe(request["model"]), request, train, valid, job_id)
    try:
        recipe, _ = api.ctx.prepare(RecipeRequest(recipe=raw))
    except Refused as exc:
        if str(exc).startswith("grpo.graders[0]") and request.get("grader"):  # the client's grader, not the recipe
            param = "method.reinforcement.grader"
            raise OpenAIError(400, str(exc).replace("grpo.graders[0]", param, 1), param, "refused") from None
        raise OpenAIError(400, f"the model's recipe is refused: {exc}", "model", "refused") from None
    except RecipeError as exc:
        raise OpenAIError(400, "the job's recipe is not valid: " + "; ".join(exc.problems), None,
                          "invalid_hyperparameters") from None
    except UsageError as exc:
        raise OpenAIError(400, str(exc), None, "invalid_request") from None
    tune = new_record(request, recipe, job_id)
    with api.ctx.lock:
        api.tunes.save(tune)
        api.tunes.note(tune["id"], f"Created fine-tuning job: {tune['id']}")
        api.tunes.note(tune["id"], "Files validated, moving job to queued state")
        record = api.ctx.store.add(tune["id"], Path(recipe.output.dir) / recipe.output.name, dump_recipe(recipe))
    api.ctx.scheduler.notify()
    return job_object(tune, record, api.files, api.tunes)


def register_jobs(app: FastAPI, api) -> None:
    @app.post("/v1/fine_tuning/jobs")
    async def create(request: Request) -> dict:
        body = await json_body(request)
        return await run_in_threadpool(create_job, api, body)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(after: str | None = None, limit: int | None = None) -> dict:
        return page([api.view(t["id"]) for t in api.tunes.all() if api.ctx.store.get(t["id"])], after, limit,
                    "fine-tuning job")

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve(job_id: str) -> dict:
        return api.view(job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict:
        api.control.stop(job_id, "cancelled")
        return api.view(job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    def pause(job_id: str) -> dict:
        api.control.stop(job_id, "paused")
        return api.view(job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    def resume(job_id: str) -> dict:
        api.control.resume(job_id)
        return api.view(job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def events(job_id: str, after: str | None = None, limit: int | None = None) -> dict:
        tune, record = api.control.find(job_id)
        return page(ev.job_events(job_id, Path(record.run_dir), api.tunes.notes_path(job_id)), after, limit,
                    "fine-tuning event")

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def checkpoints(job_id: str, after: str | None = None, limit: int | None = None) -> dict:
        tune, record = api.control.find(job_id)
        return page(ev.checkpoints(job_id, Path(record.run_dir), fine_tuned_name(tune)), after, limit,
                    "fine-tuning checkpoint")


def register_models(app: FastAPI, api) -> None:
    @app.get("/v1/models")
    def list_models() -> dict:
        tuned = [_model_object(t, api) for t in api.tunes.all() if api.fine_tuned(fine_tuned_name(t))]
        return {"object": "list", "data": api.table.objects() + tuned}

    @app.get("/v1/models/{model_id:path}")
    def retrieve_model(model_id: str) -> dict:
        tune = api.fine_tuned(model_id)
        if tune is not None:
            return _model_object(tune, api)
        api.table.resolve(model_id, "model_id")
        return next(m for m in api.table.objects() if m["id"] == model_id)

    @app.delete("/v1/models/{model_id:path}")
    def delete_model(model_id: str) -> dict:
        tune = api.fine_tuned(model_id)
        if tune is None:
            if model_id in api.table.entries:
                raise bad_request(f"{model_id!r} is a base model of {api.table.source}; only fine-tuned models "
                                  "(ft:...) can be deleted", "model", "model_not_deletable")
            raise not_found("model", model_id, "model")
        api.tunes.update(tune["id"], model_deleted=True)
        api.tunes.note(tune["id"], f"Fine-tuned model {model_id} deleted")
        api.chat.stop(model_id)
        return {"id": model_id, "object": "model", "deleted": True}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        from qlora_kit.server.openai.chat import proxy

        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise bad_request("model: required (a string)", "model")
        gguf = await run_in_threadpool(api.gguf_for, body["model"])
        child = await run_in_threadpool(api.chat.acquire, body["model"], gguf)
        return await proxy(api.chat, child, body)


def _model_object(tune: dict, api) -> dict:
    record = api.ctx.store.get(tune["id"])
    return {"id": fine_tuned_name(tune), "object": "model", "created": int(record.finished or tune["created_at"]),
            "owned_by": "qlora-kit", "root": tune["model"], "parent": tune["model"],
            "status": status_of(tune, record)}
