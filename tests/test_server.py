"""The local training job server: a real `qlora-kit server` on 127.0.0.1, driven with httpx; real tiny training
runs in the server's child processes (no mocks). Fast tests cover refusals, auth, 404s and the SSE replay logic;
slow ones submit, stream, cancel, resume, kill -9 the server, and queue 20 jobs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest

import qlora_kit as qk

from conftest import RESUME_RECIPE, assert_same_losses, assert_seq_without_gaps, run_cli, write_recipe
from server_helpers import TINY, Server, recipe_dict, sse, wait_status

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """One server with a token for the tests that train nothing."""
    tmp = tmp_path_factory.mktemp("guarded")
    (tmp / "token").write_text(TOKEN + "\n")
    server = Server(tmp / "root", "--token-file", str(tmp / "token"), token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture()
def server(tmp_path):
    servers = []

    def start(*flags: str, root: Path | None = None, port: int | None = None) -> Server:
        servers.append(Server(root or tmp_path / "root", *flags, port=port).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


# --- fast: refusals, auth, errors, the event replay logic ------------------------------------------------------

def test_refuses_a_non_loopback_bind_without_a_token(tmp_path):
    result = run_cli("server", "--host", "0.0.0.0", "--root", str(tmp_path / "root"), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("qlora-kit: error: --host 0.0.0.0: listening beyond this machine needs a bearer "
                                     "token; give --token-file FILE (or keep the default --host 127.0.0.1)")
    (tmp_path / "short").write_text("abc")
    result = run_cli("server", "--token-file", str(tmp_path / "short"), "--root", str(tmp_path / "root"), timeout=60)
    assert result.returncode == 2 and "at least 16 characters" in result.stderr


def test_bearer_token_is_required_and_checked(guarded):
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abc"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        for path in ("/v1/health", "/v1/jobs", "/openapi.json"):
            response = httpx.get(guarded.url + path, headers=headers, timeout=10)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
    with guarded.client() as client:
        assert client.get("/v1/health").json() == {"status": "ok", "running": None, "queued": 0}
        assert client.get("/v1/version").json()["events_schema_version"] == 2
        paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/artifacts/{name}", "/v1/jobs/{job_id}/events",
                 "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/resume", "/v1/validate", "/v1/plan",
                 "/v1/data/check", "/v1/health", "/v1/version"):
        assert path in paths, path


def test_paths_outside_the_root_remote_code_and_big_bodies_are_refused(guarded, tmp_path):
    root = guarded.root
    (root / "escape").symlink_to("/etc", target_is_directory=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "ok.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    refused = {
        ("data", "path", "../../etc/passwd"): "data.path: '../../etc/passwd': '..' is not allowed; give a path inside "
                                              "the server root",
        ("data", "path", "/etc/passwd"): f"data.path: '/etc/passwd': it is outside the server root {root.resolve()}",
        ("data", "path", "escape/passwd"): "data.path: 'escape/passwd': a symlink that leads outside the server root "
                                           f"{root.resolve()}",
        ("data", "eval_path", "escape/passwd"): "data.eval_path: 'escape/passwd': a symlink that leads outside the "
                                                f"server root {root.resolve()}",
        ("output", "dir", "/tmp/elsewhere"): f"output.dir: '/tmp/elsewhere': it is outside the server root "
                                             f"{root.resolve()}",
        ("model", "name", "../model"): "model.name: '../model': '..' is not allowed; give a path inside the server "
                                       "root",
        ("model", "trust_remote_code", True): "model.trust_remote_code: true is refused: it runs the model "
                                              "repository's code; start the server with --allow-remote-code to "
                                              "allow it",
    }
    with guarded.client() as client:
        for (section, key, value), message in refused.items():
            recipe = {**TINY, section: {**TINY.get(section, {}), key: value}}
            for path in ("/v1/jobs", "/v1/validate", "/v1/plan", "/v1/data/check"):
                response = client.post(path, json={"recipe": recipe})
                assert (response.status_code, response.json()) == (403, {"detail": message}), (path, key, value)
        # the same through overrides and through a recipe file
        response = client.post("/v1/jobs", json={"recipe": TINY, "overrides": ["data.path=escape/shadow"]})
        assert response.status_code == 403 and "symlink" in response.json()["detail"]
        response = client.post("/v1/jobs", json={"recipe": "escape/passwd"})
        assert response.status_code == 403 and "symlink" in response.json()["detail"]
        # inside the root is fine
        ok = client.post("/v1/validate", json={"recipe": {**TINY, "data": {**TINY["data"], "path": "data/ok.jsonl"}}})
        assert ok.status_code == 200 and ok.json()["recipe"]["data"]["path"] == str(root.resolve() / "data/ok.jsonl")
        big = client.post("/v1/jobs", content=b"{" + b" " * (50 * 2**20) + b"}",
                          headers={"content-type": "application/json"})
        assert big.status_code == 413 and "larger than 1048576 bytes" in big.json()["detail"]
        assert client.get("/v1/jobs").json() == [], "nothing refused was queued"
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())


def test_unknown_jobs_are_404_and_invalid_recipes_are_422_with_validates_problems(guarded, tmp_path):
    with guarded.client() as client:
        for method, path in (("GET", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/events"),
                             ("GET", "/v1/jobs/nope/artifacts/adapter"), ("POST", "/v1/jobs/nope/cancel"),
                             ("POST", "/v1/jobs/nope/resume"), ("DELETE", "/v1/jobs/nope")):
            response = client.request(method, path)
            assert (response.status_code, response.json()) == (404, {"detail": "no job 'nope'"}), path
        bad = {**TINY, "train": {"lr": "fast", "max_stepz": 3}, "data": {"path": "builtin:nope"}}
        response = client.post("/v1/jobs", json={"recipe": bad})
        assert response.status_code == 422
        problems = response.json()["detail"]["problems"]
        assert client.post("/v1/validate", json={"recipe": bad}).json()["detail"]["problems"] == problems
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(bad))
    cli = run_cli("validate", str(path), timeout=120)
    assert cli.returncode == 2
    assert [line[4:] for line in cli.stderr.splitlines() if line.startswith("  - ")] == problems
    # Every problem at once (as validate): the schema's (lr and the typo), then the unknown built-in dataset.
    assert len(problems) == 3 and problems[2].startswith("data.path: unknown built-in dataset 'builtin:nope'")


def test_qk_client_wraps_the_api_and_raises_server_errors(guarded):
    from qlora_kit.server.client import ServerError

    (guarded.root / "recipes").mkdir(exist_ok=True)
    (guarded.root / "recipes" / "tiny.yaml").write_text(json.dumps(TINY))
    with qk.Client(guarded.url, token=TOKEN) as client:
        assert client.health()["status"] == "ok" and client.version()["version"] == qk.__version__
        resolved = client.validate("recipes/tiny.yaml", overrides=["train.max_steps=3"])["recipe"]
        assert resolved["train"]["max_steps"] == 3 and resolved["output"]["dir"] == str(guarded.root.resolve() / "runs")
        with pytest.raises(ServerError) as err:
            client.submit({**TINY, "train": {"lr": "fast"}})
        assert err.value.status == 422 and err.value.problems == [
            "train.lr: 'fast': input should be a valid number, unable to parse string as a number"]
        assert isinstance(err.value, qk.QKError)
        with pytest.raises(ServerError) as err:
            list(client.events("nope"))
        assert (err.value.status, str(err.value)) == (404, "HTTP 404: no job 'nope'")
    with pytest.raises(ServerError) as err:
        qk.Client(guarded.url).jobs()
    assert err.value.status == 401


def test_event_stream_replays_after_last_event_id_without_gaps_or_repeats(tmp_path):
    from qlora_kit.server.client import sse_messages
    from qlora_kit.server.stream import event_stream

    path = tmp_path / "events.jsonl"
    lines = [json.dumps({"v": 2, "seq": n, "event": "step", "step": n}) for n in range(1, 8)]
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][:10])  # the 6th line is still being written
    state = {"active": True}

    async def collect(after):
        out = []
        async for chunk in event_stream(path, after, lambda: state["active"], poll_s=0.01, heartbeat_s=0.02):
            out.append(chunk)
            if len(out) == 4:
                with open(path, "a") as fh:
                    fh.write(lines[5][10:] + "\n" + lines[6] + "\n")
                state["active"] = False
        return "".join(out)

    text = asyncio.run(collect(3))
    messages = list(sse_messages(iter(text.split("\n"))))
    ids = [int(m["id"]) for m in messages if "id" in m]
    assert ids == [4, 5, 6, 7]
    assert [json.loads(m["data"])["seq"] for m in messages if "data" in m] == ids
    assert ": heartbeat" in text


def test_a_sink_whose_reader_is_gone_is_dropped_and_the_log_goes_on(tmp_path):
    from qlora_kit.eventlog import EventLog

    read, write = os.pipe()
    os.close(read)
    sink = os.fdopen(write, "w", buffering=1)
    log = EventLog(sinks=[sink])
    log.attach(tmp_path / "events.jsonl", "r1")
    for n in range(3):
        log.emit("warning", message=f"w{n}")
    assert log.sinks == [] and sink.closed
    assert [json.loads(line)["seq"] for line in (tmp_path / "events.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_plan_and_data_check_answer_as_the_cli_does(guarded, tmp_path):
    path = write_recipe(tmp_path / "dry.yaml")
    recipe = recipe_dict(path)
    with guarded.client() as client:
        plan = client.post("/v1/plan", json={"recipe": recipe, "device": "cpu", "seq_len": 64})
        check = client.post("/v1/data/check", json={"recipe": recipe})
        empty = client.post("/v1/data/check", json={"recipe": recipe, "overrides": {"model.max_seq_length": 1}})
    cli_plan = run_cli("plan", str(path), "--device", "cpu", "--seq-len", "64", "--json", timeout=300)
    cli_check = run_cli("data", "check", str(path), "--json", timeout=300)
    assert cli_plan.returncode == cli_check.returncode == 0, cli_plan.stderr + cli_check.stderr
    assert plan.status_code == 200 and plan.json() == json.loads(cli_plan.stdout)
    assert check.status_code == 200 and check.json() == json.loads(cli_check.stdout)
    cli_empty = run_cli("data", "check", str(path), "--json", "--set", "model.max_seq_length=1", timeout=300)
    assert cli_empty.returncode == 2 and empty.status_code == 422
    assert empty.json()["detail"]["message"] == cli_empty.stderr.strip().splitlines()[-1].split("error: ", 1)[1]


# --- slow: real training jobs ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_submit_stream_complete_then_download_the_gguf_and_replay_from_last_event_id(server):
    s = server()
    recipe = {**TINY, "merge": {"enabled": True, "samples": 2}, "export": {"enabled": True, "quant": ["q4_k_m"],
                                                                            "samples": 2}}
    with s.client() as client:
        job = client.post("/v1/jobs", json={"recipe": recipe})
        assert job.status_code == 201, job.text
        job = job.json()
        assert job["queue_position"] in (0, None) and job["run_dir"] == str(s.root.resolve() / "runs" / job["id"])
        events = sse(client, job["id"])
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["event"] == "run_start" and events[-1] == {**events[-1], "event": "run_end",
                                                                   "status": "complete"}
        assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]
        done = wait_status(client, job["id"], ("complete", "failed"), timeout=120)
        assert done["status"] == "complete", done
        assert done["progress"]["step"] == done["progress"]["max_steps"] == 2
        assert done["metrics"]["steps"] == 2
        gguf = [a for a in done["artifacts"] if a["kind"] == "gguf"]
        assert [a["name"] for a in gguf] == [f"gguf/{job['id']}-q4_k_m.gguf"]
        response = client.get(gguf[0]["url"])
        assert response.status_code == 200 and len(response.content) == gguf[0]["bytes"]
        assert hashlib.sha256(response.content).hexdigest() == gguf[0]["sha256"]
        part = client.get(gguf[0]["url"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == response.content[100:200]
        escape = client.get(f"/v1/jobs/{job['id']}/artifacts/%2e%2e/%2e%2e/%2e%2e/etc/passwd")
        assert escape.status_code == 404 and "has no artifact '../../../etc/passwd'" in escape.json()["detail"]
        # a UI that reconnects after event n gets n+1.. exactly, from the run's events.jsonl
        n = len(events) // 2
        again = sse(client, job["id"], last_event_id=n)
        assert again == events[n:]
        assert sse(client, job["id"], last_event_id=len(events)) == []
    with qk.Client(s.url) as qc:
        assert list(qc.events(job["id"], last_event_id=n)) == events[n:]
        saved = qc.download(job["id"], gguf[0]["name"], s.root.parent / "model.gguf")
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == gguf[0]["sha256"]
    with s.client() as client:
        assert client.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"}).json()["purged"] is True
        assert not Path(job["run_dir"]).exists() and client.get("/v1/jobs").json() == []


@pytest.mark.slow
def test_cancel_mid_run_then_resume_equals_an_uninterrupted_run(server, tmp_path, straight_losses):
    s = server()
    recipe = recipe_dict(write_recipe(tmp_path / "resume.yaml", **RESUME_RECIPE))
    with s.client() as client:
        job = client.post("/v1/jobs", json={"recipe": recipe}).json()
        seen = sse(client, job["id"], until=lambda e: e["event"] == "step" and e["step"] >= 5)
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 409  # not while it runs
        assert client.post(f"/v1/jobs/{job['id']}/cancel").json() == {"id": job["id"], "status": "running"}
        stopped = wait_status(client, job["id"], ("interrupted", "failed", "complete"))
        assert stopped["status"] == "interrupted" and stopped["exit_code"] == 143, stopped
        rest = sse(client, job["id"], last_event_id=seen[-1]["seq"])
        cancelled = [e for e in rest if e["event"] == "cancelled"]
        assert len(cancelled) == 1 and cancelled[0]["reason"] == "SIGTERM"
        assert (Path(job["run_dir"]) / cancelled[0]["checkpoint"] / "trainer_state.json").is_file()
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
        resumed = client.post(f"/v1/jobs/{job['id']}/resume").json()
        assert (resumed["status"], resumed["mode"]) == ("queued", "resume")
        done = wait_status(client, job["id"], ("complete", "failed", "interrupted"))
        assert done["status"] == "complete", done
    assert_same_losses(Path(job["run_dir"]), straight_losses)
    assert_seq_without_gaps(Path(job["run_dir"]))


@pytest.mark.slow
def test_kill_9_the_server_mid_job_then_restart_lists_it_interrupted_and_it_resumes(server, tmp_path,
                                                                                    straight_losses):
    first = server()
    recipe = recipe_dict(write_recipe(tmp_path / "resume.yaml", **RESUME_RECIPE))
    with first.client() as client:
        job = client.post("/v1/jobs", json={"recipe": recipe}).json()
        quick = {**TINY, "model": {**TINY["model"], "backend": "hf"}, "train": {**TINY["train"], "max_steps": 1}}
        queued = client.post("/v1/jobs", json={"recipe": quick}).json()  # waits behind it
        sse(client, job["id"], until=lambda e: e["event"] == "step" and e["step"] >= 4)
    first.kill9()
    second = server(root=first.root)  # settles the orphaned child (checkpoint, stop) before it answers
    with second.client() as client:
        listed = {j["id"]: j for j in client.get("/v1/jobs").json()}
        assert set(listed) == {job["id"], queued["id"]}
        assert listed[job["id"]]["status"] == "interrupted"
        assert "server stopped" in listed[job["id"]]["error"]
        assert listed[queued["id"]]["status"] in ("queued", "running")  # queued jobs start again
        assert client.post(f"/v1/jobs/{job['id']}/resume").json()["mode"] == "resume"
        assert wait_status(client, queued["id"], ("complete", "failed"))["status"] == "complete"
        done = wait_status(client, job["id"], ("complete", "failed", "interrupted"))
        assert done["status"] == "complete", done
    assert_same_losses(Path(job["run_dir"]), straight_losses)
    assert_seq_without_gaps(Path(job["run_dir"]))


@pytest.mark.slow
def test_twenty_concurrent_submissions_queue_run_one_at_a_time_and_all_complete(server):
    s = server()
    recipe = {**TINY, "model": {**TINY["model"], "backend": "hf"}, "train": {**TINY["train"], "max_steps": 1}}
    answers: list = []
    barrier = threading.Barrier(20)

    def submit():
        with s.client() as client:
            barrier.wait(30)
            answers.append(client.post("/v1/jobs", json={"recipe": recipe}))

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [a.status_code for a in answers] == [201] * 20
    ids = [a.json()["id"] for a in answers]
    assert len(set(ids)) == 20
    with s.client() as client:
        listed = client.get("/v1/jobs").json()
        assert sum(j["status"] == "running" for j in listed) <= 1
        positions = sorted(j["queue_position"] for j in listed if j["status"] == "queued")
        assert positions == list(range(len(positions))) and len(positions) >= 18
        deadline = time.monotonic() + 40 * 60
        while time.monotonic() < deadline:
            listed = client.get("/v1/jobs").json()
            assert sum(j["status"] == "running" for j in listed) <= 1
            if all(j["status"] not in ("queued", "running") for j in listed):
                break
            time.sleep(1)
    assert [j["status"] for j in listed] == ["complete"] * 20, [(j["id"], j["status"], j["error"]) for j in listed]
    spans = sorted((j["started"], j["finished"], j["created"]) for j in listed)
    for (_, finished, _), (started, _, _) in zip(spans, spans[1:]):
        assert finished <= started, "two jobs ran at once"
    assert [c for _, _, c in spans] == sorted(c for _, _, c in spans), "first in, first out"
