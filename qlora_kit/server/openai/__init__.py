"""OpenAI's fine-tuning API on the job server, so code written for OpenAI (the official client, the cookbook)
fine-tunes here: Files, fine-tuning jobs (events, checkpoints, cancel, pause, resume), models, chat completions.

Same queue, persistence, auth, confinement and limits as /v1/jobs: a fine-tuning job is a JobStore record run by
the server's one Scheduler; uploads are stored under the root with ids made here; every recipe passes
`recipes.prepare`. Modules: `errors` (OpenAI's error shape), `common` (pagination, records), `files`, `models`
(the model table), `mapping` (request -> recipe: the documented rule), `jobs` (records, statuses, control),
`events` (events, checkpoints, results CSV), `chat` (llama.cpp in child processes), `routes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qlora_kit.server.openai import errors, files, routes
from qlora_kit.server.openai.chat import ChatPool
from qlora_kit.server.openai.errors import OpenAIError, bad_request
from qlora_kit.server.openai.files import FileStore
from qlora_kit.server.openai.jobs import Control, TuneStore, fine_tuned_name, job_object, status_of
from qlora_kit.server.openai.mapping import file_mismatch
from qlora_kit.server.openai.models import ModelTable
from qlora_kit.server.store import ACTIVE

MAX_FILE_BYTES = 512 << 20
MAX_FILES = 1000


@dataclass
class OpenAIAPI:
    ctx: object  # the app's _Context: config, store, scheduler, confiner, lock, prepare()
    files: FileStore
    tunes: TuneStore
    table: ModelTable
    chat: ChatPool
    control: Control

    def view(self, job_id: str) -> dict:
        tune, record = self.control.find(job_id)
        return job_object(tune, record, self.files, self.tunes)

    def usable_file(self, file_id: str, param: str, method: str) -> str:
        """The stored path of an uploaded fine-tune file that passed validation and holds rows `method` (the job's
        method.type) trains on."""
        record = self.files.get(file_id, param)
        if record["purpose"] != "fine-tune":
            raise bad_request(f"{param}: {file_id} has purpose {record['purpose']!r}; upload the data with purpose "
                              "'fine-tune'", param, "invalid_purpose")
        if record["status"] != "processed":
            raise bad_request(f"{param}: {file_id} ({record['filename']}) failed validation: "
                              f"{record['status_details']}", param, "invalid_file")
        mismatch = file_mismatch(method, *self.files.rows(file_id), param, record)
        if mismatch:
            raise bad_request(mismatch, param, "invalid_file")
        return str(self.files.data_path(file_id))

    def in_use(self, file_id: str) -> str | None:
        for tune in self.tunes.all():
            record = self.ctx.store.get(tune["id"])
            if record and record.status in ACTIVE and file_id in (tune["training_file"], tune["validation_file"]):
                return tune["id"]
        return None

    def fine_tuned(self, name: str) -> dict | None:
        """The job whose fine-tuned model `name` is, if it succeeded and was not deleted."""
        for tune in self.tunes.all():
            record = self.ctx.store.get(tune["id"])
            if (record and not tune["model_deleted"] and fine_tuned_name(tune) == name
                    and status_of(tune, record) == "succeeded"):
                return tune
        return None

    def gguf_for(self, name: str) -> Path:
        from qlora_kit.server.views import artifacts

        tune = self.fine_tuned(name)
        if tune is not None:
            record = self.ctx.store.get(tune["id"])
            ggufs = [a["name"] for a in artifacts(record) if a["kind"] == "gguf"]
            if not ggufs:
                raise OpenAIError(400, f"{name}: its job exported no GGUF file to answer from", "model",
                                  "model_not_servable")
            return Path(record.run_dir) / ggufs[0]
        entry = self.table.resolve(name)
        if "gguf" in entry:
            return Path(entry["gguf"])
        from qlora_kit.server.openai.bases import base_gguf

        model = entry.get("base") or (self.table.base_recipe(name).get("model") or {}).get("name")
        if not isinstance(model, str):
            raise OpenAIError(400, f"{name!r}: its recipe names no model.name to answer from", "model",
                              "model_not_servable")
        return base_gguf(self.ctx.config.root, name, model)

    def close(self) -> None:
        self.chat.close()


def register(app, ctx) -> OpenAIAPI:
    """Add the OpenAI routes and error handlers to the job server's app; `close()` it when the server stops."""
    config = ctx.config
    tunes = TuneStore(config.root)
    api = OpenAIAPI(ctx, FileStore(config.root, config.max_file, config.max_files), tunes, ModelTable(config.models),
                    ChatPool(config.root, config.chat_idle_s), Control(ctx, tunes))
    errors.install(app)
    files.register(app, api.files, api.in_use)
    routes.register_jobs(app, api)
    routes.register_models(app, api)
    return api

