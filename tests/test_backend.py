"""The backend contract: the Python API (any thread, cancel + resume), child-process jobs, hooks and plugins, the
event log, exit codes and one-line errors for bad input. Training tests run real tiny runs in subprocesses (the
pytest process never imports Unsloth)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import (RESUME_RECIPE, ROOT, assert_same_losses, assert_seq_without_gaps, plugin_env, read_events,
                      run_cli, write_jsonl, write_recipe)


def run_python(code: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env or plugin_env())


# --- unit: the package surface, events, the log, registries (no training) -------------------------------------

def test_import_is_light_typed_and_lists_its_api():
    result = run_python("""
        import sys, qlora_kit as qk
        names = [qk.load_recipe, qk.train, qk.start, qk.merge, qk.export, qk.plan, qk.bench, qk.events_schema,
                 qk.CancelToken, qk.Hook, qk.Job, qk.TrainResult, qk.QKError, qk.Recipe]
        print(sorted(m for m in ("torch", "transformers", "unsloth", "trl", "peft") if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert (ROOT / "qlora_kit" / "py.typed").is_file()
    import qlora_kit

    for name in ("load_recipe", "train", "start", "merge", "export", "plan", "bench", "events_schema", "CancelToken",
                 "Hook", "Job", "TrainResult", "MergeResult", "ExportResult", "Artifact", "QKError"):
        assert name in qlora_kit.__all__, name


def test_load_recipe_takes_paths_dicts_and_recipes_with_dotted_overrides(tmp_path):
    import qlora_kit as qk

    path = write_recipe(tmp_path / "r.yaml")
    recipe = qk.load_recipe(path, {"train.max_steps": 7, "lora.r": 4})
    assert (recipe.train.max_steps, recipe.lora.r, recipe.output.name) == (7, 4, "r")
    assert qk.load_recipe(str(path), ["train.lr=1e-4"]).train.lr == 1e-4
    again = qk.load_recipe(recipe, {"train.max_steps": 9})
    assert again.train.max_steps == 9 and recipe.train.max_steps == 7, "the given Recipe is not modified"
    from_dict = qk.load_recipe({"model": {"name": "builtin:tiny-llama"}, "data": {"path": "builtin:tiny-chat"}})
    assert from_dict.output.name == "run"
    with pytest.raises(qk.RecipeError) as err:
        qk.load_recipe(path, {"train.lr": "fast"})
    assert str(err.value) == f"{path}: train.lr: 'fast': input should be a valid number, unable to parse string as a number"


def test_event_log_numbers_without_gaps_across_processes_and_delivers_what_others_wrote(tmp_path):
    from qlora_kit.eventlog import EventLog
    from qlora_kit.events import parse_event

    path = tmp_path / "events.jsonl"
    heard = []
    first = EventLog(deliver=[heard.append])
    first.attach(path, "abc")
    first.emit("run_start", run_dir=str(tmp_path), backend="hf", device="cpu")
    # Another process (here: another log on the same file) appends, as the merge stage does.
    other = EventLog()
    other.attach(path, "abc")
    other.emit("stage", name="merge", status="start")
    first.emit("warning", message="after the merge started")
    seqs = [parse_event(line).seq for line in path.read_text().splitlines()]
    assert seqs == [1, 2, 3]
    assert [(e.seq, e.event) for e in heard] == [(1, "run_start"), (2, "stage"), (3, "warning")]
    resumed = EventLog()
    resumed.attach(path, "abc")  # a resumed session continues the numbering and replays nothing
    assert resumed.emit("run_start", run_dir="x", backend="hf", device="cpu").seq == 4
    with pytest.raises(ValueError):
        first.emit("step", step=1)  # fields outside the schema are a programming error, never written


def test_a_stage_run_later_on_a_finished_run_ends_the_log_again_and_one_in_the_pipeline_does_not(tmp_path):
    from qlora_kit.errors import StageError
    from qlora_kit.eventlog import EventLog, read_events, run_stage, stage

    (tmp_path / "run.json").write_text(json.dumps({"status": "complete", "run_id": "abc"}))
    trainer = EventLog()
    trainer.attach(tmp_path / "events.jsonl", "abc")
    trainer.emit("run_start", run_dir=str(tmp_path), backend="hf", device="cpu")
    with run_stage(child := EventLog(), tmp_path), stage(child, "merge"):  # in the pipeline: the trainer ends it
        pass
    trainer.emit("run_end", status="complete")
    with run_stage(log := EventLog(), tmp_path), stage(log, "eval"):  # by hand, later
        pass
    with pytest.raises(StageError) as failed, run_stage(log := EventLog(), tmp_path), stage(log, "export"):
        raise StageError("verification failed for q4_k_m")
    assert log.was_reported(failed.value), "the CLI must not report it a second time, after run_end"
    events = read_events(tmp_path / "events.jsonl")
    assert [e.seq for e in events] == list(range(1, 12)) and {e.run_id for e in events} == {"abc"}
    assert [(e.event, getattr(e, "name", None) or getattr(e, "status", None)) for e in events] == [
        ("run_start", None), ("stage", "merge"), ("stage", "merge"), ("run_end", "complete"),
        ("stage", "eval"), ("stage", "eval"), ("run_end", "complete"),
        ("stage", "export"), ("stage", "export"), ("error", None), ("run_end", "failed")]
    assert events[-1].error == "verification failed for q4_k_m" and events[-3].status == "failed"


def test_a_hook_that_raises_becomes_a_warning_and_the_others_still_hear_everything():
    from qlora_kit.eventlog import EventLog
    from qlora_kit.hooks import Hook, HookSet

    class Broken(Hook):
        def on_step(self, event):
            raise RuntimeError("boom")

    class Counter(Hook):
        def __init__(self):
            self.kinds = []

        def on_event(self, event):
            self.kinds.append(event.event)

    counter = Counter()
    log = EventLog()
    log.deliver.append(HookSet([Broken(), counter], warn=lambda m, s: log.emit("warning", message=m, source=s)))
    log.emit("step", step=1, max_steps=2, loss=1.0)
    log.emit("step", step=2, max_steps=2, loss=0.5)
    assert counter.kinds == ["step", "warning", "step", "warning"]


def test_plugin_formats_and_templates_validate_and_appear_in_the_schema():
    result = run_python("""
        import json
        from qlora_kit.recipe import load_recipe
        from qlora_kit.recipe.schema import Recipe
        r = load_recipe({"model": {"name": "builtin:tiny-llama"}, "data": {"path": "x.jsonl", "format": "qa"}})
        enum = Recipe.model_json_schema()["$defs"]["DataSection"]["properties"]["format"]["enum"]
        print(json.dumps([r.data.format, enum]))
    """, env=plugin_env("plugins"))
    assert result.returncode == 0, result.stderr
    fmt, enum = json.loads(result.stdout)
    assert fmt == "qa" and enum == ["auto", "openai", "sharegpt", "alpaca", "preference", "openai_dpo", "kto",
                                       "prompt_completion", "text", "qa"]
    without = run_cli("validate", "--set", "data.format=qa", str(ROOT / "recipes" / "tiny-demo.yaml"))
    assert without.returncode == 2
    assert "data.format: 'qa' is not allowed; choose one of: auto, openai, sharegpt, alpaca, preference, openai_dpo, kto, prompt_completion, " \
           "text" in without.stderr


# --- training through the API, jobs, hooks (real tiny runs) ---------------------------------------------------

@pytest.mark.slow
def test_train_in_a_thread_cancel_token_then_resume_equals_an_uninterrupted_run(tmp_path, straight_losses):
    recipe = write_recipe(tmp_path / "api.yaml", **RESUME_RECIPE)
    result = run_python("""
        import json, sys, threading
        import qlora_kit as qk

        recipe = qk.load_recipe(sys.argv[1])
        token = qk.CancelToken()

        class CancelAtStep3(qk.Hook):
            def on_step(self, event):
                if event.step >= 3:
                    token.cancel()

        results = {}
        def work(key, **kw):  # how UIs run long work: a worker thread (signal handlers are main-thread only)
            results[key] = qk.train(recipe, **kw)

        for key, kw in (("first", dict(hooks=[CancelAtStep3()], cancel=token)), ("second", dict(resume=True))):
            thread = threading.Thread(target=work, args=(key,), kwargs=kw)
            thread.start()
            thread.join()
        print(json.dumps({k: v.model_dump(mode="json") for k, v in results.items()}))
    """, str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    first, second = out["first"], out["second"]
    assert first["status"] == "cancelled" and first["exit_code"] == 130 and 3 <= first["step"] < 24
    assert second["status"] == "complete" and second["exit_code"] == 0 and second["step"] == 24
    run_dir = tmp_path / "runs" / "api"
    assert [e["reason"] for e in read_events(run_dir, "cancelled")] == ["cancel token"]
    assert_same_losses(run_dir, straight_losses)
    assert_seq_without_gaps(run_dir)
    adapter = [a for a in second["artifacts"] if a["kind"] == "adapter"]
    assert [Path(a["path"]).name for a in adapter] == ["adapter_model.safetensors"]
    assert second["metrics"]["steps"] == 24 and second["run_id"] == first["run_id"]


@pytest.mark.slow
def test_example_host_streams_cancels_resumes_without_importing_torch(tmp_path):
    """examples/host.py drives a run through qk.start: live events, cancel midway, resume, artifacts; the host
    process never imports torch, transformers or Unsloth."""
    recipe = write_recipe(tmp_path / "host.yaml", train={"max_steps": 12, "logging_steps": 1, "save_steps": 1000},
                          merge={"enabled": True, "verify": False})
    result = subprocess.run([sys.executable, "examples/host.py", str(recipe), "--cancel-at", "3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900, env=plugin_env())
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["heavy_modules"] == []
    assert summary["statuses"] == ["cancelled", "complete"] and summary["exit_codes"] == [143, 0]
    assert 3 <= summary["steps"][0] < 12 and summary["steps"][1] == 12
    assert "  step 3/12  loss " in result.stdout and "  cancelling at step 3" in result.stdout
    kinds = sorted(a["kind"] for a in summary["artifacts"])
    assert kinds == ["adapter", "merge_report", "merged_shard", "metrics"]
    assert_seq_without_gaps(Path(summary["run_dir"]))


@pytest.mark.slow
def test_failing_hooks_and_plugins_warn_and_the_run_goes_on(tmp_path):
    recipe = write_recipe(tmp_path / "w.yaml", train={"max_steps": 2, "save_steps": 1000})
    events = tmp_path / "events.jsonl"
    result = subprocess.run([sys.executable, "-m", "qlora_kit", "train", str(recipe), "--events", str(events),
                             "--hook", "qk_test_plugin:FailingHook"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env=plugin_env("plugins", "plugins_broken"))
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [json.loads(line) for line in events.read_text().splitlines() if '"warning"' in line]
    messages = [(w["source"], w["message"]) for w in warnings]
    assert ("plugins", "plugin hook broken (qk_no_such_module:Hook) failed to load: ModuleNotFoundError: No module "
                       "named 'qk_no_such_module'") in messages
    assert ("hook", "hook FailingHook raised on step event: RuntimeError: failing on purpose") in messages
    assert json.loads(events.read_text().splitlines()[-1])["status"] == "complete"
    strict = run_cli_env(["train", str(recipe), "--overwrite", "--strict-plugins"], plugin_env("plugins_broken"))
    assert strict.returncode == 2
    assert strict.stderr.strip() == ("qlora-kit: error: plugin hook broken (qk_no_such_module:Hook) failed to load: "
                                     "ModuleNotFoundError: No module named 'qk_no_such_module' (drop "
                                     "--strict-plugins to run without it)")


@pytest.mark.slow
def test_out_of_memory_is_exit_3_with_the_plan_command(tmp_path):
    """A real CPU MemoryError: the data segment is capped after the imports, then a 64 x 1024-token batch needs
    far more than the cap (the same cell `bench --mem-limit` records as oom)."""
    rows = [{"text": " ".join(f"w{i}x{j}" for j in range(1500))} for i in range(64)]  # > 1024 tokens each
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    recipe = write_recipe(tmp_path / "oom.yaml", model={"max_seq_length": 1024}, data={"path": str(data)},
                          train={"max_steps": 2, "batch_size": 64})
    result = run_python("""
        import resource, sys
        from qlora_kit.model.backends import get_backend
        from qlora_kit.recipe import load_recipe
        get_backend("unsloth").prepare(load_recipe(sys.argv[1]).model)
        import torch, trl, peft  # the whole stack is loaded before the cap
        resource.setrlimit(resource.RLIMIT_DATA, (2500 * 2**20, resource.RLIM_INFINITY))
        from qlora_kit.cli import main
        sys.exit(main(["train", sys.argv[1], "--events", sys.argv[2]]))
    """, str(recipe), str(tmp_path / "events.jsonl"))
    assert result.returncode == 3, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("qlora-kit: error: out of memory while training (") and \
        f"`qlora-kit plan {recipe}` estimates what fits" in last
    errors = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()
              if '"error"' in line and json.loads(line)["event"] == "error"]
    assert [(e["kind"], e["exit_code"]) for e in errors] == [("oom", 3)]
    assert json.loads((tmp_path / "runs" / "oom" / "run.json").read_text())["status"] == "failed"


# --- bad input: one line, exit 2, nothing half-written ---------------------------------------------------------

def run_cli_env(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlora_kit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.parametrize("hook, message", [
    ("no_such_pkg.hooks:Progress", "--hook no_such_pkg.hooks:Progress: cannot import no_such_pkg.hooks: "
                                   "ModuleNotFoundError: No module named 'no_such_pkg'"),
    ("json:nothing", "--hook json:nothing: json has no attribute 'nothing'"),
    ("json:JSONDecoder", "--hook json:JSONDecoder: JSONDecoder object has no on_event(event) method; subclass "
                         "qk.Hook or define on_event"),
    ("progress", "--hook 'progress': expected package.module:attr, e.g. --hook my_tool.hooks:Progress"),
])
def test_bad_hooks_are_one_line_errors_before_anything_runs(tmp_path, hook, message):
    recipe = write_recipe(tmp_path / "h.yaml")
    result = run_cli("train", str(recipe), "--hook", hook)
    assert result.returncode == 2
    assert result.stderr.strip() == f"qlora-kit: error: {message}"
    assert not (tmp_path / "runs").exists()


def test_unwritable_events_file_and_missing_logger_package(tmp_path):
    recipe = write_recipe(tmp_path / "e.yaml")
    result = run_cli("train", str(recipe), "--events", str(tmp_path / "no" / "such" / "dir" / "e.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"qlora-kit: error: --events {tmp_path}/no/such/dir/e.jsonl: cannot write: "
                                     "No such file or directory")
    recipe = write_recipe(tmp_path / "tb.yaml", train={"report_to": ["mlflow"]})
    result = run_cli("train", str(recipe), "--events", "-")
    assert result.returncode == 2
    assert result.stderr.strip() == ("qlora-kit: error: train.report_to: mlflow needs the mlflow package, which is "
                                     "not installed; pip install 'qlora-kit[mlflow]' or remove it from "
                                     "train.report_to")
    error = json.loads(result.stdout)  # the one line on stdout is the error event
    assert (error["event"], error["kind"], error["exit_code"], error["run_id"]) == ("error", "recipe", 2, None)
    assert not (tmp_path / "runs").exists()


def test_recipe_errors_are_error_events_too(tmp_path):
    recipe = write_recipe(tmp_path / "bad.yaml", train={"lr": "fast"})
    result = run_cli("train", str(recipe), "--events", "-")
    assert result.returncode == 2
    event = json.loads(result.stdout)
    assert (event["event"], event["kind"], event["seq"]) == ("error", "recipe", 1)
    assert event["message"] == f"{recipe}: train.lr: 'fast': input should be a valid number, unable to parse " \
                               "string as a number"


def test_api_options_are_the_cli_flags(tmp_path):
    import qlora_kit as qk

    with pytest.raises(qk.UsageError) as err:
        qk.merge(tmp_path, no_such_option=1)
    assert str(err.value) == ("qk.merge: no_such_option: not an option (options: base, dtype, max_shard_size, "
                              "verify, compare, samples, allow_mismatch)")
    with pytest.raises(qk.UsageError) as err:
        qk.merge(tmp_path / "nothing")
    assert str(err.value) == f"{tmp_path / 'nothing'}: no such run directory"
    plan = qk.plan(write_recipe(tmp_path / "p.yaml"), device="cpu", seq_len=64)
    cli = json.loads(run_cli("plan", str(tmp_path / "p.yaml"), "--device", "cpu", "--seq-len", "64", "--json").stdout)
    assert plan.model_dump(exclude_unset=True) == cli
    assert plan.fits is None and plan.needed_bytes > max(plan.terms.values()) > 0
