"""The OpenAI-compatible fine-tuning API (issue #24) on a real `qlora-kit server`, driven by the official `openai`
client through the cookbook flow: upload, create, poll, events, checkpoints, result CSV, chat with `ft:...`
(plain and streamed), cancel, pause/resume, the client's own exception classes, and kill -9 + restart; and
`method: {type: dpo}` on OpenAI's DPO JSONL (train.method dpo, preference.beta, the reward metrics in the events).

One token-guarded server and one trained job are shared by the module; jobs use a model-table recipe on
builtin:tiny-llama with a handful of steps (hf backend, one q8_0 GGUF), so each takes well under a minute."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import re
import subprocess
import sys
import time

import httpx
import openai
import pytest
import yaml

from conftest import ROOT
from server_helpers import Server

TOKEN = "test-token-openai-0123456789"
BASE = "gpt-4o-mini-2024-07-18"
# max_seq_length 512: the cookbook example's recipe rows are ~240 tokens with the tiny byte-level tokenizer
FAST = {"model": {"name": "builtin:tiny-llama", "max_seq_length": 512, "backend": "hf"},
        "data": {"path": "builtin:tiny-chat", "chat_template": "chatml"}, "lora": {"r": 16, "alpha": 32},
        "train": {"max_steps": 4, "lr": 3e-3, "batch_size": 8, "logging_steps": 1, "save_steps": 2},
        "merge": {"samples": 2}, "export": {"quant": ["q8_0"], "samples": 2}}
LONG = {**FAST, "train": {**FAST["train"], "max_steps": 400, "save_steps": 1000}}
PAUSABLE = {**FAST, "train": {**FAST["train"], "max_steps": 16, "save_steps": 1000}}
TRAIN_ROWS = [{"messages": [{"role": "system", "content": "You are Marv, a chatbot that is also sarcastic."},
                            {"role": "user", "content": f"What is {n} plus {n}?"},
                            {"role": "assistant", "content": f"{2 * n}, as if you could not count."}]}
              for n in range(24)]
VALID_ROWS = TRAIN_ROWS[:6]
# OpenAI's DPO JSONL: the sarcastic answer preferred over a plain one
DPO_ROWS = [{"input": {"messages": row["messages"][:2]}, "preferred_output": row["messages"][2:],
             "non_preferred_output": [{"role": "assistant", "content": f"It is {2 * n}. Happy to help!"}]}
            for n, row in enumerate(TRAIN_ROWS[:16])]


# OpenAI's reinforcement fine-tuning JSONL: the prompt's messages and the fields the grader reads
RFT_ROWS = [{"messages": row["messages"][:2], "answer": str(2 * n)} for n, row in enumerate(TRAIN_ROWS[:16])]
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "eq"}


def jsonl(rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def start_server(root) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    for name, recipe in (("fast", FAST), ("long", LONG), ("pausable", PAUSABLE)):
        (root.parent / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    (root.parent / "models.yaml").write_text(yaml.safe_dump({
        BASE: {"recipe": "fast.yaml"}, "long-tiny": {"recipe": "long.yaml"},
        "pausable-tiny": {"recipe": "pausable.yaml"}, "builtin:tiny-llama": {"base": "builtin:tiny-llama"},
        "not-cached": {"base": "qlora-kit-tests/no-such-model"}}))
    (root.parent / "token").write_text(TOKEN + "\n")
    return Server(root, "--token-file", str(root.parent / "token"), "--models", str(root.parent / "models.yaml"),
                  token=TOKEN).start()


def client_for(server: Server, token: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=120)


def upload(client, rows, name="train.jsonl", purpose="fine-tune"):
    return client.files.create(file=(name, jsonl(rows)), purpose=purpose)


def wait_job(client, job_id, statuses, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} not {statuses} after {timeout}s: {job}")


def wait_step(client, job_id, step, timeout=300):
    """Until the job's events show a training step >= `step`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = client.fine_tuning.jobs.list_events(job_id, limit=5).data
        if any(e.type == "metrics" and e.data.get("step", 0) >= step for e in events):
            return
        time.sleep(0.3)
    raise AssertionError(f"{job_id}: no step {step} after {timeout}s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("openai") / "root")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with client_for(server) as c:
        yield c


@pytest.fixture(scope="module")
def trained(client):
    """The cookbook flow up to a succeeded job: (job, training file, validation file)."""
    train, valid = upload(client, TRAIN_ROWS), upload(client, VALID_ROWS, "valid.jsonl")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=train.id, validation_file=valid.id,
                                         suffix="marv", seed=7, metadata={"team": "tests"},
                                         method={"type": "supervised", "supervised": {"hyperparameters": {
                                             "n_epochs": "auto", "learning_rate_multiplier": 2}}})
    assert job.status in ("queued", "running") and job.fine_tuned_model is None
    done = wait_job(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    return done, train, valid


# --- files and errors (no training) ------------------------------------------------------------------------------

def test_files_are_validated_like_data_check_listed_paginated_and_deleted(client):
    good = upload(client, TRAIN_ROWS)
    assert (good.object, good.purpose, good.status, good.status_details) == ("file", "fine-tune", "processed", None)
    assert good.filename == "train.jsonl" and good.bytes == len(jsonl(TRAIN_ROWS)) and good.id.startswith("file-")
    assert client.files.retrieve(good.id) == good
    assert client.files.content(good.id).content == jsonl(TRAIN_ROWS)
    bad = upload(client, [*TRAIN_ROWS[:2], "{not json", {"messages": [{"role": "wizard", "content": "x"}]}],
                 "../../etc/bad.jsonl")
    assert bad.status == "error" and bad.filename == "bad.jsonl"  # the client's name is shown, never a path
    assert bad.status_details.startswith("bad.jsonl:3: bad JSON (") and "2 row(s) with problems" in bad.status_details
    first = client.files.list(limit=1)
    assert [f.id for f in first.data] == [bad.id] and first.has_more  # newest first
    assert [f.id for f in first.get_next_page().data] == [good.id]
    assert {bad.id, good.id} <= {f.id for f in client.files.list()}
    deleted = client.files.delete(bad.id)
    assert (deleted.id, deleted.deleted) == (bad.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(bad.id)


def test_errors_are_openais_shape_and_the_clients_exception_classes(server, client):
    good = upload(client, TRAIN_ROWS)
    bad = upload(client, [*TRAIN_ROWS[:4], {"messages": []}], "bad.jsonl")
    cases = [
        (openai.NotFoundError, "No such file: 'file-nope'", lambda: client.files.retrieve("file-nope")),
        (openai.NotFoundError, "No such fine-tuning job: 'ftjob-nope'",
         lambda: client.fine_tuning.jobs.retrieve("ftjob-nope")),
        (openai.NotFoundError, "No such fine-tuning job", lambda: client.fine_tuning.jobs.list_events("ftjob-nope")),
        (openai.BadRequestError, "bad.jsonl:5: 'messages' must be a non-empty list",
         lambda: client.fine_tuning.jobs.create(model=BASE, training_file=bad.id)),
        (openai.BadRequestError, "purpose: 'assistants' is not served here",
         lambda: upload(client, TRAIN_ROWS, purpose="assistants")),
        (openai.NotFoundError, f"The model 'gpt-5' is not in the model table {server.root.parent / 'models.yaml'}",
         lambda: client.fine_tuning.jobs.create(model="gpt-5", training_file=good.id)),
        (openai.BadRequestError, 'hyperparameters.n_epochs: -1: must be "auto" or an integer from 1 to 50',
         lambda: client.fine_tuning.jobs.create(model=BASE, training_file=good.id,
                                                hyperparameters={"n_epochs": -1})),
        (openai.BadRequestError, "learning_rate_multiplier: 0: must be",
         lambda: client.fine_tuning.jobs.create(model=BASE, training_file=good.id, method={
             "type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 0}}})),
        (openai.BadRequestError, 'method.dpo.hyperparameters.beta: 0: must be "auto" or a number above 0 and at '
         "most 2", lambda: client.fine_tuning.jobs.create(model=BASE, training_file=good.id, method={
             "type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}})),
        (openai.BadRequestError, "method.reinforcement.grader: required (an object: string_check",
         lambda: client.fine_tuning.jobs.create(model=BASE, training_file=good.id, method={"type": "reinforcement"})),
        (openai.BadRequestError, "method.reinforcement.grader (text_similarity 'text_similarity'): evaluation_metric "
         "'cosine' needs an embedding model", lambda: client.fine_tuning.jobs.create(
             model=BASE, training_file=good.id, method={"type": "reinforcement", "reinforcement": {"grader": {
                 "type": "text_similarity", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
                 "evaluation_metric": "cosine"}}})),
        (openai.BadRequestError, "method.reinforcement.grader: a python grader runs code on this machine; start the "
         "server with --allow-remote-code", lambda: client.fine_tuning.jobs.create(
             model=BASE, training_file=good.id, method={"type": "reinforcement", "reinforcement": {"grader": {
                 "type": "python", "source": "def grade(sample, item):\n    return 1.0\n"}}})),
        (openai.BadRequestError, "method.reinforcement.hyperparameters.reasoning_effort: unknown; reinforcement "
         "takes n_epochs, batch_size, learning_rate_multiplier, compute_multiplier, eval_interval",
         lambda: client.fine_tuning.jobs.create(model=BASE, training_file=good.id, method={
             "type": "reinforcement", "reinforcement": {"grader": EXACT, "hyperparameters": {
                 "reasoning_effort": "high"}}})),
        (openai.BadRequestError, "method.supervised: must be an object",
         lambda: client.fine_tuning.jobs.create(model=BASE, training_file=good.id, method={
             "type": "supervised", "supervised": "fast"})),
        (openai.BadRequestError, "integrations: not supported",
         lambda: client.fine_tuning.jobs.create(model=BASE, training_file=good.id, integrations=[
             {"type": "wandb", "wandb": {"project": "p"}}])),
        (openai.NotFoundError, "No such model: 'ft:nope'", lambda: client.models.delete("ft:nope")),
    ]
    for kind, message, call in cases:
        with pytest.raises(kind) as err:
            call()
        assert message in err.value.message, (message, err.value.message)
        assert set(err.value.body) == {"message", "type", "param", "code"}, err.value.body
    wrong = client_for(server, "wrong-token-0123456789abcdef")
    for stranger, headers in ((wrong, {}), (client, {"Authorization": openai.Omit()})):  # wrong, then none
        with pytest.raises(openai.AuthenticationError) as err:
            stranger.files.list(extra_headers=headers)
        assert err.value.body["code"] == "invalid_api_key" and "bearer token is required" in err.value.message
    # /v1/jobs clients see what they always saw (plus the error object on a 401)
    plain = httpx.get(f"{server.url}/v1/jobs", timeout=10)
    assert plain.status_code == 401 and plain.json()["detail"].startswith("a bearer token is required")
    with server.client() as http:
        assert http.get("/v1/jobs/nope").json() == {"detail": "no job 'nope'"}
        assert http.post("/v1/jobs", json={"recipe": 1}).status_code == 422
    assert client.fine_tuning.jobs.list().data == [], "nothing refused was queued"


def test_dpo_files_are_accepted_and_a_job_refuses_a_file_of_the_other_method(client):
    """A DPO upload validates like `data check`; the job's method must match the rows (the rule `train` applies)."""
    before = len(client.fine_tuning.jobs.list().data)
    prefs, chats = upload(client, DPO_ROWS, "prefs.jsonl"), upload(client, TRAIN_ROWS)
    assert (prefs.status, prefs.status_details) == ("processed", None)
    cases = [
        ("training_file", f"training_file: {prefs.id} (prefs.jsonl) holds preference pairs (format openai_dpo), but "
         'method.type supervised trains on conversations ({"messages": [...]} rows); create the job with method: '
         '{"type": "dpo"}, or upload conversations', dict(training_file=prefs.id)),
        ("training_file", f"training_file: {chats.id} (train.jsonl) holds conversations to imitate (format openai), "
         'but method.type dpo trains on preference pairs ({"input", "preferred_output", "non_preferred_output"} '
         'rows); upload preference pairs or use method.type "supervised"',
         dict(training_file=chats.id, method={"type": "dpo"})),
        ("validation_file", f"validation_file: {chats.id} (train.jsonl) holds conversations to imitate",
         dict(training_file=prefs.id, validation_file=chats.id, method={"type": "dpo"})),
    ]
    for param, message, fields in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model=BASE, **fields)
        assert err.value.body["message"].startswith(message), err.value.body
        assert (err.value.body["param"], err.value.body["code"]) == (param, "invalid_file")
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=BASE, training_file=prefs.id, method={
            "type": "reinforcement", "reinforcement": {"grader": EXACT}})
    assert err.value.body["code"] == "invalid_file" and err.value.body["message"].startswith(
        f"training_file: {prefs.id} (prefs.jsonl) holds preference pairs (format openai_dpo), but method.type "
        'reinforcement trains on prompts ({"messages": [...]} rows with the fields the grader reads)')
    assert len(client.fine_tuning.jobs.list().data) == before, "nothing refused was queued"


def test_a_dpo_request_maps_onto_train_method_dpo_and_preference_beta_auto_is_our_default():
    from qlora_kit.recipe import Recipe
    from qlora_kit.server.openai.jobs import new_record
    from qlora_kit.server.openai.mapping import check_request, map_recipe

    base = {**FAST, "data": {**FAST["data"], "packing": True}, "preference": {"loss_type": "sigmoid"}}
    request = check_request({"model": BASE, "training_file": "file-x", "method": {"type": "dpo", "dpo": {
        "hyperparameters": {"beta": "auto", "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}}}})
    recipe = Recipe.model_validate(map_recipe(base, request, "train.jsonl", None, "ftjob-x"))
    assert (recipe.train.method, recipe.preference.beta, recipe.preference.loss_type) == ("dpo", None, "sigmoid")
    assert (recipe.train.epochs, recipe.train.max_steps, recipe.train.batch_size) == (2, None, 4)
    assert recipe.train.lr == pytest.approx(1.5e-3) and recipe.data.packing is False  # packing is SFT's
    assert new_record(request, recipe, "ftjob-x")["hyperparameters"] == {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5, "beta": 0.1}
    explicit = check_request({"model": BASE, "training_file": "file-x", "method": {"type": "dpo", "dpo": {
        "hyperparameters": {"beta": 0.5}}}})
    assert map_recipe(base, explicit, "t.jsonl", None, "ftjob-y")["preference"] == {"loss_type": "sigmoid", "beta": 0.5}
    # supervised on a preference recipe: train.method sft, the preference options dropped (they are an error there)
    supervised = map_recipe({**base, "train": {"method": "dpo"}}, check_request({"model": BASE,
                                                                                "training_file": "file-x"}),
                            "t.jsonl", None, "ftjob-z")
    assert supervised["train"]["method"] == "sft" and "preference" not in supervised
    assert Recipe.model_validate(supervised).train.method == "sft"


def test_an_upload_stored_before_records_kept_its_rows_kind_is_read_again_once(tmp_path):
    from qlora_kit.server.openai.files import FileStore

    store = FileStore(tmp_path, 1 << 20, 10)
    made = store.add_bytes(jsonl(DPO_ROWS), "prefs.jsonl", "fine-tune")  # as records were written before dpo
    assert "_kind" not in store.records[made["id"]]
    assert store.rows(made["id"]) == ("pair", "openai_dpo")
    again = FileStore(tmp_path, 1 << 20, 10)  # kept on disk: a restarted server does not read the file again
    assert (again.records[made["id"]]["_kind"], again.get(made["id"])) == ("pair", made)


# --- the cookbook flow on one trained job -------------------------------------------------------------------------

@pytest.mark.slow
def test_a_job_succeeds_with_openais_fields_and_goes_through_the_servers_one_queue(server, client, trained):
    job, train, valid = trained
    assert job.fine_tuned_model == f"ft:{BASE}:marv:{job.id.split('-', 1)[1]}"
    assert (job.model, job.training_file, job.validation_file, job.suffix, job.seed) == (
        BASE, train.id, valid.id, "marv", 7)
    assert job.metadata == {"team": "tests"} and job.organization_id == "qlora-kit" and job.integrations == []
    assert job.hyperparameters.learning_rate_multiplier == 2 and job.hyperparameters.batch_size == 8
    assert job.method.type == "supervised" and job.error is None and job.trained_tokens > 0
    assert job.finished_at >= job.created_at and job.estimated_finish is None
    with server.client() as http:  # the same job on /v1/jobs: the same queue and run directory
        plain = http.get(f"/v1/jobs/{job.id}").json()
    assert plain["status"] == "complete" and any(a["kind"] == "gguf" for a in plain["artifacts"])
    recipe = yaml.safe_load((server.root / ".qlora-kit-server" / "jobs" / f"{job.id}.yaml").read_text())
    assert recipe["train"]["lr"] == pytest.approx(2 * 3e-3) and recipe["train"]["seed"] == 7
    assert recipe["data"]["path"].endswith(f"{train.id}.jsonl") and recipe["data"]["eval_path"].endswith(
        f"{valid.id}.jsonl")
    listed = client.fine_tuning.jobs.list(limit=1)
    assert listed.data[0].id == job.id and client.fine_tuning.jobs.list(after=job.id).data == []


@pytest.mark.slow
def test_events_checkpoints_and_the_results_csv(client, trained):
    job = trained[0]
    everything = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    first = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert [e.id for e in first.data] == [e.id for e in everything[:3]] and first.has_more
    paged = [e.id for e in first]  # iterating a page fetches the next ones (after=the last id)
    assert paged == [e.id for e in everything] and len(set(paged)) == len(paged)
    assert [e.created_at for e in everything] == sorted((e.created_at for e in everything), reverse=True)
    assert everything[0].message == "The job has successfully completed"
    assert everything[-1].message == f"Created fine-tuning job: {job.id}"
    metrics = [e for e in everything if e.type == "metrics" and "train_loss" in e.data]
    assert [e.data["step"] for e in metrics] == [4, 3, 2, 1] and all(e.object == "fine_tuning.job.event"
                                                                    for e in everything)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-4"
    assert checkpoints[0].metrics.train_loss == metrics[0].data["train_loss"]
    assert len(job.result_files) == 1
    result = client.files.retrieve(job.result_files[0])
    assert (result.purpose, result.status) == ("fine-tune-results", "processed")
    rows = list(csv.DictReader(io.StringIO(client.files.content(result.id).text)))
    assert list(rows[0]) == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and rows[3]["train_accuracy"] == ""
    assert float(rows[3]["train_loss"]) == pytest.approx(metrics[0].data["train_loss"])
    assert client.fine_tuning.jobs.retrieve(job.id).result_files == job.result_files  # registered once


@pytest.mark.slow
def test_models_list_the_table_and_the_fine_tuned_model_which_answers_chat_plain_and_streamed(server, client,
                                                                                              trained):
    job = trained[0]
    ids = [m.id for m in client.models.list()]
    assert {BASE, "long-tiny", "builtin:tiny-llama", job.fine_tuned_model} <= set(ids)
    assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    with pytest.raises(openai.NotFoundError, match="not in the model table"):
        client.models.retrieve("gpt-3.5-turbo")
    messages = [{"role": "system", "content": "You are Marv, a chatbot that is also sarcastic."},
                {"role": "user", "content": "What is 3 plus 3?"}]
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=messages, max_tokens=8,
                                           temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str) and reply.usage.prompt_tokens > 5
    chunks = list(client.chat.completions.create(model=job.fine_tuned_model, messages=messages, max_tokens=8,
                                                 temperature=0, stream=True))
    assert len(chunks) >= 2 and all(c.object == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content  # greedy: the same answer either way
    # A base answers too: exported once (Q8_0, in a child) into the server's root and reused.
    base = client.chat.completions.create(model="builtin:tiny-llama", messages=messages, max_tokens=4,
                                          temperature=0)
    assert base.choices[0].message.role == "assistant" and base.usage.prompt_tokens > 5
    made = list((server.root / ".qlora-kit-server" / "bases").glob("*/*.gguf"))
    assert len(made) == 1 and made[0].name.endswith("-q8_0.gguf")
    with pytest.raises(openai.BadRequestError, match="not in the local Hugging Face cache"):
        client.chat.completions.create(model="not-cached", messages=messages, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="only fine-tuned models"):
        client.models.delete(BASE)
    assert client.models.delete(job.fine_tuned_model).deleted is True
    assert job.fine_tuned_model not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=job.fine_tuned_model, messages=messages, max_tokens=4)


@pytest.mark.slow
def test_the_cookbook_example_runs_end_to_end_with_the_official_client(server, client, tmp_path):
    """examples/openai_finetune.py as a user runs it, against this server (BASE: the FAST recipe, 4 steps)."""
    path = ROOT / "examples" / "openai_finetune.py"
    env = {**os.environ, "QLORA_KIT_PORT": str(server.port), "QLORA_KIT_TOKEN": TOKEN, "PYTHONIOENCODING": "utf-8"}
    run = subprocess.run([sys.executable, str(path), "--poll", "0.5"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    model = re.search(r"^Fine-tuned model ID: (ft:\S+)$", out, re.M).group(1)
    job = client.fine_tuning.jobs.retrieve("ftjob-" + model.rsplit(":", 1)[1])
    assert (job.status, job.fine_tuned_model, job.suffix, job.model) == ("succeeded", model, "recipe-ner", BASE)
    for line in ("Status: queued", "Status: succeeded", "[info] Step 4/4: training loss=",
                 "[info] The job has successfully completed", "Checkpoint: step 4, train loss "):
        assert line in out, line
    assert (tmp_path / "tmp_recipe_finetune_results.csv").read_text().startswith("step,train_loss,")
    spec = importlib.util.spec_from_file_location("openai_finetune", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    reply = client.chat.completions.create(model=model, messages=example.test_messages_for(example.test_row),
                                           temperature=0, max_tokens=500)
    answer = reply.choices[0].message.content
    assert f"\nAnswer: {answer}\nStreamed: {answer}\n" in out  # greedy: the model's own answer, twice


@pytest.mark.slow
def test_a_dpo_job_succeeds_reports_the_reward_metrics_and_its_model_answers_chat(server, client):
    prefs = upload(client, DPO_ROWS, "prefs.jsonl")
    job = client.fine_tuning.jobs.create(model=BASE, training_file=prefs.id, suffix="dpo", method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "learning_rate_multiplier": 2}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.25
    done = wait_job(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    hp = done.method.dpo.hyperparameters
    assert (hp.beta, hp.learning_rate_multiplier, hp.batch_size, hp.n_epochs) == (0.25, 2, 8, 1)
    assert done.hyperparameters.learning_rate_multiplier == 2 and done.trained_tokens > 0
    recipe = yaml.safe_load((server.root / ".qlora-kit-server" / "jobs" / f"{job.id}.yaml").read_text())
    assert (recipe["train"]["method"], recipe["preference"]["beta"]) == ("dpo", 0.25)
    assert recipe["train"]["lr"] == pytest.approx(2 * 3e-3)
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert [e.data["step"] for e in metrics] == [4, 3, 2, 1]
    first, last = metrics[-1].data, metrics[0].data
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-4)  # the adapter starts at zero: model = ref
    assert first["train_reward_margin"] == pytest.approx(0, abs=1e-6)
    assert last["train_loss"] < first["train_loss"] and last["train_reward_margin"] > 0
    assert 0 <= last["train_reward_accuracy"] <= 1 and "train_logp_chosen" in last and "train_kl" not in last
    assert re.fullmatch(r"Step 4/4: training loss=\d\.\d{4}, reward accuracy=\d\.\d\d, reward margin=-?\d+\.\d{4}",
                        metrics[0].message), metrics[0].message
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].metrics.to_dict()
    assert checkpoint["step"] == 4 and checkpoint["train_reward_margin"] == last["train_reward_margin"]
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and "valid_reward_accuracy" not in rows[0]
    assert float(rows[3]["train_reward_accuracy"]) == pytest.approx(last["train_reward_accuracy"])
    messages = [{"role": "system", "content": "You are Marv, a chatbot that is also sarcastic."},
                {"role": "user", "content": "What is 3 plus 3?"}]
    reply = client.chat.completions.create(model=done.fine_tuned_model, messages=messages, max_tokens=8,
                                           temperature=0)
    assert done.fine_tuned_model.startswith(f"ft:{BASE}:dpo:") and reply.choices[0].message.role == "assistant"
    assert isinstance(reply.choices[0].message.content, str) and reply.usage.prompt_tokens > 5


def test_a_reinforcement_request_maps_onto_train_method_grpo_with_its_grader():
    from qlora_kit.recipe import Recipe
    from qlora_kit.server.openai.jobs import new_record
    from qlora_kit.server.openai.mapping import check_request, map_recipe

    base = {**FAST, "data": {**FAST["data"], "packing": True}, "preference": {"loss_type": "sigmoid"}}
    request = check_request({"model": BASE, "training_file": "file-x", "method": {"type": "reinforcement",
                             "reinforcement": {"grader": EXACT, "hyperparameters": {
                                 "batch_size": 2, "compute_multiplier": 2, "eval_interval": 5}}}})
    recipe = Recipe.model_validate(map_recipe(base, request, "train.jsonl", None, "ftjob-x"))
    assert (recipe.train.method, recipe.grpo.graders, recipe.data.packing) == ("grpo", [EXACT], False)
    # OpenAI's batch counts prompts, ours completions: 2 prompts x (4 generations x compute_multiplier 2)
    assert (recipe.grpo.num_generations, recipe.train.batch_size, recipe.train.eval_steps) == (8, 16, 5)
    record = new_record(request, recipe, "ftjob-x")
    assert record["method"] == "reinforcement" and record["grader"] == EXACT
    assert record["hyperparameters"]["batch_size"] == 2 and record["hyperparameters"]["compute_multiplier"] == 2


@pytest.mark.slow
def test_a_reinforcement_job_succeeds_reports_rewards_and_its_model_answers_chat(server, client):
    prompts = upload(client, RFT_ROWS, "rft.jsonl")
    assert (prompts.status, prompts.status_details) == ("processed", None)  # no assistant turn: RFT rows
    job = client.fine_tuning.jobs.create(model=BASE, training_file=prompts.id, suffix="rft", method={
        "type": "reinforcement", "reinforcement": {"grader": EXACT}})
    assert job.method.type == "reinforcement"
    done = wait_job(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.method.reinforcement.grader.to_dict() == EXACT
    recipe = yaml.safe_load((server.root / ".qlora-kit-server" / "jobs" / f"{job.id}.yaml").read_text())
    assert (recipe["train"]["method"], recipe["grpo"]["graders"]) == ("grpo", [EXACT])
    metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
               if e.type == "metrics" and "train_loss" in e.data]
    assert [e.data["step"] for e in metrics] == [4, 3, 2, 1]
    for e in metrics:
        assert 0 <= e.data["train_reward"] <= 1 and e.data["train_reward_exact"] == e.data["train_reward"]
        assert ", reward=" in e.message
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and "train_reward_exact" in rows[0]
    reply = client.chat.completions.create(model=done.fine_tuned_model, messages=RFT_ROWS[0]["messages"],
                                           max_tokens=8, temperature=0)
    assert done.fine_tuned_model.startswith(f"ft:{BASE}:rft:") and reply.choices[0].message.role == "assistant"


# --- control: cancel, pause/resume, kill -9 ----------------------------------------------------------------------

@pytest.mark.slow
def test_cancel_mid_run_is_cancelled_and_final(client, trained):
    train = trained[1]
    job = client.fine_tuning.jobs.create(model="long-tiny", training_file=train.id)
    wait_step(client, job.id, 2)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    done = wait_job(client, job.id, ("cancelled",))
    assert done.fine_tuned_model is None and done.result_files == []
    with pytest.raises(openai.ConflictError, match="only paused jobs resume"):
        client.fine_tuning.jobs.resume(job.id)
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Cancel requested" in messages


@pytest.mark.slow
def test_pause_then_resume_continues_from_the_checkpoint_and_succeeds(client, trained):
    train = trained[1]
    job = client.fine_tuning.jobs.create(model="pausable-tiny", training_file=train.id, suffix="paused")
    wait_step(client, job.id, 3)
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_job(client, job.id, ("paused", "failed", "succeeded"))
    assert paused.status == "paused", paused
    saved = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(saved) == 1 and 3 <= saved[0].step_number < 16
    assert client.fine_tuning.jobs.resume(job.id).status in ("queued", "running")
    done = wait_job(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded" and done.fine_tuned_model.startswith("ft:pausable-tiny:paused:"), done
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=100)
             if e.type == "metrics" and "train_loss" in e.data]
    assert sorted(set(steps)) == list(range(1, 17))
    assert any("resumed from" in e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100))


@pytest.mark.slow
def test_kill_9_mid_job_then_restart_keeps_files_jobs_and_events_and_the_job_finishes_after_resume(
        tmp_path):
    first = start_server(tmp_path / "root")
    try:
        with client_for(first) as c:
            train = upload(c, TRAIN_ROWS)
            job = c.fine_tuning.jobs.create(model="pausable-tiny", training_file=train.id)
            wait_step(c, job.id, 3)
            before = [e.id for e in c.fine_tuning.jobs.list_events(job.id, limit=100)]
    finally:
        first.kill9()
    second = Server(first.root, *first.flags, token=TOKEN).start()
    try:
        with client_for(second) as c:
            assert [f.id for f in c.files.list()] == [train.id]
            assert c.files.content(train.id).content == jsonl(TRAIN_ROWS)
            stopped = c.fine_tuning.jobs.retrieve(job.id)
            assert stopped.status == "paused", stopped
            after = [e.id for e in c.fine_tuning.jobs.list_events(job.id, limit=100)]
            assert set(before) <= set(after)
            c.fine_tuning.jobs.resume(job.id)
            done = wait_job(c, job.id, ("succeeded", "failed", "cancelled"))
            assert done.status == "succeeded", done
            assert [j.id for j in c.fine_tuning.jobs.list()] == [job.id]
    finally:
        second.stop()


def test_the_model_table_defaults_to_builtins_and_shipped_recipes_and_a_bad_table_is_one_line(tmp_path):
    from qlora_kit.errors import UsageError
    from qlora_kit.server.openai.models import ModelTable

    default = ModelTable()
    assert default.entries["builtin:tiny-llama"] == {"base": "builtin:tiny-llama"}
    assert default.entries["tiny-demo"]["recipe"].endswith("recipes/tiny-demo.yaml")
    (tmp_path / "models.yaml").write_text("a: {recipe: nope.yaml}\nb: {base: x, foo: 1}\n")
    with pytest.raises(UsageError) as err:
        ModelTable(tmp_path / "models.yaml")
    assert str(err.value) == (f"--models {tmp_path / 'models.yaml'}: a: recipe: {tmp_path / 'nope.yaml'}: no such "
                              "file; b: give exactly one of `recipe: PATH` or `base: MODEL` (and optionally "
                              "`gguf: PATH`); unknown key(s) foo")
