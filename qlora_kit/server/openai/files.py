"""OpenAI's Files API for fine-tuning data: POST /v1/files (multipart, purpose=fine-tune), list, retrieve,
content, delete.

An upload is stored as ROOT/.qlora-kit-server/files/ID.jsonl (the id is made here; the client's file name is only
shown back, never used as a path) with its record beside it (ID.json). It is validated at once by the same code as
`qlora-kit data check` (`data.sources.read_rows` + `data.prepare.convert_rows`: every row, every problem, the
format detected as `data.format: auto` does): `status` is "processed", or "error" with `status_details` naming the
first bad line as `data check` does (`train.jsonl:3: bad JSON (...)`). A job refuses a file in error, and a file
whose rows are not what its method trains on (the record keeps the detected format and the rows' kind: conversations,
preference pairs or unpaired feedback).
Limits: the upload's size (`--max-file`) and how many files the server keeps (`--max-files`).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from qlora_kit.server.openai.common import new_id, page, read_records, state_dir, write_json
from qlora_kit.server.openai.errors import OpenAIError, bad_request, conflict, not_found

UPLOAD_PURPOSES = ("fine-tune",)  # what this server trains from; OpenAI's others are refused by name
OPENAI_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
CHUNK = 1 << 20


class FileStore:
    def __init__(self, root: Path, max_bytes: int, max_files: int):
        self.dir = state_dir(root, "files")
        self.max_bytes, self.max_files = max_bytes, max_files
        self.lock = threading.RLock()
        self.records = {r["id"]: r for r in read_records(self.dir) if "id" in r}

    def data_path(self, file_id: str) -> Path:
        return self.dir / f"{file_id}.jsonl"

    def get(self, file_id: str, param: str | None = None) -> dict:
        with self.lock:
            record = self.records.get(file_id)
        if record is None:
            raise not_found("file", file_id, param)
        return _public(record)

    def all(self) -> list[dict]:
        """Newest first (`_t`: the upload's exact time; created_at has whole seconds)."""
        with self.lock:
            records = sorted(self.records.values(), key=lambda r: (r.get("_t", 0), r["id"]), reverse=True)
        return [_public(r) for r in records]

    def reserve(self) -> str:
        with self.lock:
            if len(self.records) >= self.max_files:
                raise OpenAIError(409, f"this server keeps at most {self.max_files} files (--max-files); delete "
                                       "some with DELETE /v1/files/{id}", None, "too_many_files")
        return new_id("file")

    def add(self, file_id: str, filename: str, purpose: str, status: str, details: str | None,
            rows: dict | None = None) -> dict:
        """`rows`: {"_format", "_kind"} of a processed upload (kept, not shown: what a job checks its method by)."""
        record = {"id": file_id, "object": "file", "bytes": self.data_path(file_id).stat().st_size,
                  "created_at": int(time.time()), "filename": filename, "purpose": purpose, "status": status,
                  "status_details": details, "expires_at": None, "_t": time.time(), **(rows or {})}
        with self.lock:
            write_json(self.dir / f"{file_id}.json", record)
            self.records[file_id] = record
        return _public(record)

    def add_bytes(self, data: bytes, filename: str, purpose: str) -> dict:
        file_id = new_id("file")
        self.data_path(file_id).write_bytes(data)
        return self.add(file_id, filename, purpose, "processed", None)

    def rows(self, file_id: str) -> tuple[str, str]:
        """(kind, format) of a processed upload's rows: sft, pair or unpaired (formats' Example.kind). Uploads
        stored before the record kept them are read again once."""
        with self.lock:
            record = dict(self.records[file_id])
        if "_kind" not in record:
            record.update(validate_rows(self.data_path(file_id), record["filename"])[2])
            with self.lock:
                write_json(self.dir / f"{file_id}.json", record)
                self.records[file_id] = record
        return record.get("_kind", "sft"), record.get("_format", "auto")

    def delete(self, file_id: str) -> None:
        with self.lock:
            self.records.pop(file_id, None)
            for path in (self.dir / f"{file_id}.json", self.data_path(file_id)):
                path.unlink(missing_ok=True)


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def validate_rows(path: Path, filename: str) -> tuple[str, str | None, dict]:
    """("processed", None, {"_format", "_kind"}) or ("error", the first problem as `data check` names it, {})."""
    from qlora_kit.data.prepare import convert_rows
    from qlora_kit.data.sources import read_rows
    from qlora_kit.errors import DataError

    try:
        examples = convert_rows(read_rows(str(path), "file"), "auto")
    except DataError as exc:
        return "error", str(exc).replace(str(path), filename), {}
    if not examples.problems:
        # one format per file (detected from the first row), so every row is of the first one's kind
        kind = examples.items[0][1].kind if examples.items else "sft"
        return "processed", None, {"_format": examples.format.name, "_kind": kind}
    prompts = convert_rows(read_rows(str(path), "file"), "auto", method="grpo")
    if not prompts.problems:  # reinforcement fine-tuning's rows: prompts to answer, and what the graders read
        return "processed", None, {"_format": prompts.format.name, "_kind": "prompt"}
    first = examples.problems[0]
    where = first.where.replace(str(path), filename)
    return "error", (f"{where}: {first.detail}; {len(examples.problems)} row(s) with problems, first at line "
                     f"{where.rsplit(':', 1)[-1]} (as `qlora-kit data check` reports them); fix them and upload "
                     "again"), {}


def client_filename(name: str | None) -> str:
    """The name shown back: the last path component, printable characters only; never used as a path."""
    base = re.sub(r"[^\w.\- ]", "_", (name or "upload.jsonl").replace("\\", "/").rsplit("/", 1)[-1])[:200]
    return base.strip() or "upload.jsonl"


async def _save_upload(store: FileStore, upload, file_id: str) -> None:
    seen = 0
    with open(store.data_path(file_id), "wb") as out:
        while chunk := await upload.read(CHUNK):
            seen += len(chunk)
            if seen > store.max_bytes:
                raise OpenAIError(413, f"file: larger than {store.max_bytes} bytes (--max-file)", "file",
                                  "file_too_large")
            out.write(chunk)


def register(app: FastAPI, store: FileStore, in_use) -> None:
    @app.post("/v1/files")
    async def upload(request: Request) -> dict:
        from starlette.formparsers import MultiPartException

        try:
            form = await request.form(max_files=1, max_fields=8)
        except (MultiPartException, AssertionError) as exc:
            raise bad_request(f"the body must be multipart/form-data with `file` and `purpose`: {exc}") from None
        purpose, upload = form.get("purpose"), form.get("file")
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            known = purpose in OPENAI_PURPOSES
            raise bad_request(f"purpose: {purpose!r} is {'not served here' if known else 'not a purpose'}; this "
                              f"server takes files for {', '.join(UPLOAD_PURPOSES)} only", "purpose",
                              "invalid_purpose")
        if upload is None or isinstance(upload, str):
            raise bad_request("file: missing; send the JSONL file as the multipart field `file`", "file")
        file_id = store.reserve()
        try:
            await _save_upload(store, upload, file_id)
            filename = client_filename(upload.filename)
            status, details, rows = await run_in_threadpool(validate_rows, store.data_path(file_id), filename)
        except BaseException:
            store.data_path(file_id).unlink(missing_ok=True)
            raise
        return store.add(file_id, filename, purpose, status, details, rows)

    @app.get("/v1/files")
    def list_files(after: str | None = None, limit: int | None = None, order: str = "desc",
                   purpose: str | None = None) -> dict:
        items = [r for r in store.all() if purpose is None or r["purpose"] == purpose]
        return page(items if order != "asc" else items[::-1], after, limit, "file")

    @app.get("/v1/files/{file_id}")
    def retrieve(file_id: str) -> dict:
        return store.get(file_id)

    @app.get("/v1/files/{file_id}/content")
    def content(file_id: str):
        record = store.get(file_id)
        return FileResponse(store.data_path(file_id), media_type="application/octet-stream",
                            filename=record["filename"])

    @app.delete("/v1/files/{file_id}")
    def delete(file_id: str) -> dict:
        store.get(file_id)
        user = in_use(file_id)
        if user is not None:
            raise conflict(f"file {file_id} is the data of fine-tuning job {user}, which is queued or running")
        store.delete(file_id)
        return {"id": file_id, "object": "file", "deleted": True}
