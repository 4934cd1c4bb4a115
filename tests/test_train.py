"""Training through the real CLI on the tiny built-in model (CPU): Unsloth and the hf baseline, the run directory,
interrupt + resume equality, and refusing to clobber runs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import (RESUME_RECIPE, ROOT, assert_same_losses, assert_seq_without_gaps, read_events, run_cli,
                      plugin_env, step_losses, write_recipe)

pytestmark = pytest.mark.slow

LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The shipped demo recipe as `make demo` runs it (output under a temp dir), followed the way a host follows a
    run: events as JSON lines on stdout (`--events -`) and a hook from an installed plugin package (entry point)."""
    out = tmp_path_factory.mktemp("demo")
    hook_log = out / "hook.jsonl"
    result = subprocess.run([sys.executable, "-m", "qlora_kit", "train", "recipes/tiny-demo.yaml", "--set",
                             f"output.dir={out}", "--events", "-"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env=plugin_env("plugins", QK_TEST_HOOK_LOG=str(hook_log)))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "tiny-demo", result


def test_demo_trains_and_halves_the_loss(demo_run):
    run_dir, result = demo_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 300
    assert metrics["final_loss"] <= 0.5 * metrics["first_loss"], metrics
    assert metrics["eval_loss"] < metrics["first_loss"]
    assert metrics["tokens_per_second"] > 0 and metrics["peak_memory_bytes"] > 100 * 2**20
    assert metrics["peak_memory_kind"] == "cpu_peak_rss"
    # Not a terminal, and stdout carries the events: plain progress lines on stderr.
    assert "step 10/300  loss " in result.stderr and " tok/s " in result.stderr and " eta " in result.stderr


def test_events_on_stdout_are_the_run_log_and_follow_the_shipped_schema(demo_run):
    """`--events -`: stdout holds only event lines (merge and export included), identical to events.jsonl, and
    every one validates against the JSON Schema `qlora-kit events-schema` prints."""
    import jsonschema

    run_dir, result = demo_run
    lines = result.stdout.splitlines()
    assert lines == (run_dir / "events.jsonl").read_text().splitlines()
    printed = run_cli("events-schema")
    assert printed.returncode == 0
    schema = json.loads(printed.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    validator = jsonschema.Draft202012Validator(schema)
    for line in lines:
        validator.validate(json.loads(line))
    events = assert_seq_without_gaps(run_dir)
    assert {e["event"] for e in events} >= {"run_start", "stage", "data", "step", "eval", "checkpoint", "artifact",
                                            "run_end"}
    # A broken event must fail the schema (the check above can fail).
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**json.loads(lines[0]), "seq": 0})


def test_plugin_hook_hears_every_event_in_order_as_event_models(demo_run):
    run_dir, _ = demo_run
    heard = [json.loads(line) for line in (run_dir.parent / "hook.jsonl").read_text().splitlines()]
    assert heard, "the plugin hook was never called"
    events = read_events(run_dir)
    assert [h["seq"] for h in heard] == [e["seq"] for e in events]
    assert heard[0]["event"] == "run_start" and heard[-1]["event"] == "run_end" and heard[-1]["status"] == "complete"
    assert {h["type"].rsplit(".", 1)[0] for h in heard} == {"qlora_kit.events"}
    gguf = [h for h in heard if h["event"] == "artifact" and h["kind"] == "gguf"]
    assert sorted(Path(h["path"]).name for h in gguf) == ["tiny-demo-q4_k_m.gguf", "tiny-demo-q8_0.gguf"]
    for h in gguf:  # sizes and checksums are the files'
        data = Path(h["path"]).read_bytes()
        assert h["bytes"] == len(data) and h["sha256"] == hashlib.sha256(data).hexdigest()


def test_demo_run_directory_is_complete_and_self_describing(demo_run):
    run_dir, _ = demo_run
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "complete" and status["backend"] == "unsloth" and status["device"] == "cpu"
    assert status["quantization"] == {"linear4bit_modules": 14, "quant_type": ["nf4"], "double_quant": [True]}
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    # Every device-dependent "auto" is resolved in the saved recipe, and so is the detected data format.
    assert {k: recipe["train"][k] for k in ("batch_size", "grad_accum", "optimizer", "gradient_checkpointing",
                                            "device")} == {"batch_size": 8, "grad_accum": 1, "optimizer": "adamw_torch",
                                                           "gradient_checkpointing": False, "device": "cpu"}
    assert recipe["model"]["dtype"] == "float32" and recipe["data"]["format"] == "openai"
    adapter = run_dir / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                 "qlora_kit.json"):
        assert (adapter / name).is_file(), name
    assert not list(adapter.glob("*.bin")), "safetensors only"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == LINEAR and config["r"] == 16 and config["lora_alpha"] == 32
    assert "<|im_start|>" in (adapter / "chat_template.jinja").read_text()
    assert (run_dir / "checkpoints" / "checkpoint-300").is_dir()


def test_demo_events_follow_schema_v2(demo_run):
    run_dir, _ = demo_run
    events = read_events(run_dir)
    assert all(e["v"] == 2 and isinstance(e["t"], float) for e in events)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds.count("run_end") == 1 and kinds[-1] == "run_end"
    assert read_events(run_dir, "run_end")[0]["status"] == "complete"
    # Later stages (merge, export) run after training completed, each with its own stage and artifact events; the
    # run ends after them.
    after = events[kinds.index("artifact"):]
    assert [(e["event"], e.get("name") or e.get("kind"), e.get("status")) for e in after] == [
        ("artifact", "adapter", None), ("artifact", "metrics", None),
        ("stage", "merge", "start"), ("stage", "merge", "end"), ("artifact", "merged_shard", None),
        ("artifact", "merge_report", None), ("stage", "export", "start"), ("stage", "export", "end"),
        ("artifact", "gguf", None), ("artifact", "gguf", None), ("artifact", "modelfile", None),
        ("artifact", "export_report", None), ("stage", "eval", "start"), ("stage", "eval", "end"),
        ("artifact", "eval_report", None), ("artifact", "eval_report", None), ("artifact", "eval_predictions", None),
        ("artifact", "eval_scores", None), ("artifact", "eval_stages", None), ("run_end", None, "complete")]
    step_events = read_events(run_dir, "step")
    assert all(e["memory_bytes"] > 100 * 2**20 for e in step_events)
    assert step_events[0]["eta_s"] is None and step_events[-1]["eta_s"] == 0 and step_events[1]["eta_s"] > 0
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == [1] + list(range(10, 301, 10))
    data = read_events(run_dir, "data")[0]
    assert (data["train_rows"], data["eval_rows"], data["chat_template"]) == (154, 28, "chatml")
    assert [e["step"] for e in read_events(run_dir, "checkpoint")] == [100, 200, 300]
    stages = [(e["name"], e["status"]) for e in read_events(run_dir, "stage")]
    assert stages == [(s, p) for s in ("load_model", "prepare_data", "train", "eval_loss", "save_adapter", "merge",
                                       "export", "eval")
                      for p in ("start", "end")]
    report = json.loads((run_dir / "merged" / "merge_report.json").read_text())
    assert report["fidelity"]["dequantized"]["max_abs_logit_diff"] <= 1e-3


def test_existing_run_is_not_clobbered(demo_run, tmp_path):
    run_dir, _ = demo_run
    args = ("recipes/tiny-demo.yaml", "--set", f"output.dir={run_dir.parent}")
    result = run_cli("train", *args)
    assert result.returncode == 2
    instead = (f"use it (qlora-kit eval|merge|export {run_dir}), --overwrite to train it again, or --set "
               "output.name=NEW_NAME for another run")
    assert result.stderr.strip() == (f"qlora-kit: error: {run_dir} already exists and is complete (nothing left to "
                                     f"train); {instead}")
    result = run_cli("train", *args, "--resume")
    assert result.returncode == 2
    assert f"{run_dir}: this run is already complete, nothing to resume; {instead}" in result.stderr


def test_hf_baseline_matches_unsloth_at_the_first_step(demo_run, tmp_path):
    """Same seed, same data, same NF4 weights: the first loss (before any update) must agree across backends."""
    run_dir, _ = demo_run
    recipe = write_recipe(tmp_path / "hf.yaml", model={"backend": "hf"},
                          train={"max_steps": 40, "lr": 3e-3, "logging_steps": 10, "batch_size": 8},
                          data={"path": "builtin:tiny-demo", "eval_path": "builtin:tiny-demo-heldout"})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    hf = json.loads((tmp_path / "runs" / "hf" / "metrics.json").read_text())
    unsloth = json.loads((run_dir / "metrics.json").read_text())
    assert hf["first_loss"] == pytest.approx(unsloth["first_loss"], abs=1e-3)
    assert hf["final_loss"] < 0.8 * hf["first_loss"]
    status = json.loads((tmp_path / "runs" / "hf" / "run.json").read_text())
    assert status["backend"] == "hf" and "unsloth" not in status, "the baseline process must not import unsloth"
    assert status["quantization"]["double_quant"] == [True]


def _train_until(recipe, run_dir, after_step: int, stop) -> subprocess.CompletedProcess:
    """Start `train`, and call stop(proc) once the events show `after_step`."""
    proc = subprocess.Popen([sys.executable, "-m", "qlora_kit", "train", str(recipe)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "events.jsonl").is_file() and any(e["step"] >= after_step for e in read_events(run_dir, "step")):
            stop(proc)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("how, code, reason", [
    ("SIGINT", 130, "SIGINT"), ("SIGTERM", 143, "SIGTERM"), ("STOP file", 130, "STOP file")])
def test_cancel_then_resume_equals_an_uninterrupted_run(tmp_path, straight_losses, how, code, reason):
    recipe = write_recipe(tmp_path / "resumed.yaml", **RESUME_RECIPE)
    run_dir = tmp_path / "runs" / "resumed"

    def stop(proc):
        if how == "STOP file":
            (run_dir / "STOP").touch()
        else:
            proc.send_signal(getattr(signal, how))

    first = _train_until(recipe, run_dir, 3, stop)
    assert first.returncode == code, first.stderr[-2000:]
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "interrupted" and 3 <= status["step"] < 24
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "adapter").exists()
    assert not (run_dir / "STOP").exists(), "the STOP file is consumed, so resuming does not stop again"
    stopped = status["step"]
    cancelled = read_events(run_dir, "cancelled")
    assert [(e["step"], e["reason"], e["checkpoint"]) for e in cancelled] == [
        (stopped, reason, f"checkpoints/checkpoint-{stopped}")]
    assert read_events(run_dir)[-1]["event"] == "run_end" and read_events(run_dir)[-1]["status"] == "interrupted"

    second = run_cli("train", str(recipe), "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    resumed_from = read_events(run_dir, "run_start")[-1]["resumed_from"]
    assert resumed_from.endswith(f"checkpoint-{stopped}")
    assert_same_losses(run_dir, straight_losses)
    events = assert_seq_without_gaps(run_dir)  # seq continues across the resume
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 24
    # metrics.json describes the whole run, not the session that finished it: both sessions' losses (every step
    # logged, so the mean per step) and both sessions' training time.
    losses = [straight_losses[step] for step in range(1, 25)]
    assert metrics["first_loss"] == pytest.approx(losses[0], rel=1e-6)
    assert metrics["final_loss"] == pytest.approx(losses[-1], rel=1e-6)
    assert metrics["train_loss"] == pytest.approx(sum(losses) / 24, rel=1e-5)
    first_session = events[:events.index(read_events(run_dir, "run_start")[-1])]
    first_train = next(e["t"] for e in first_session if e["event"] == "stage" and e["name"] == "train")
    second_train = [e for e in events if e["event"] == "stage" and e["name"] == "train" and e["status"] == "end"]
    assert metrics["train_seconds"] == pytest.approx(first_session[-1]["t"] - first_train + second_train[0]["seconds"],
                                                     abs=0.01)


def test_resume_refuses_a_changed_recipe(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", train={"max_steps": 2, "save_steps": 1})
    assert run_cli("train", str(recipe)).returncode == 0
    run_dir = tmp_path / "runs" / "r"
    status = json.loads((run_dir / "run.json").read_text())
    status["status"] = "interrupted"  # pretend it stopped after its checkpoint
    (run_dir / "run.json").write_text(json.dumps(status))
    result = run_cli("train", str(recipe), "--resume", "--set", "train.lr=0.01")
    assert result.returncode == 2
    assert "the recipe differs from the one this run started with" in result.stderr


def test_failure_during_the_run_is_marked_failed_not_complete(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", lora={"target_modules": ["q_proj", "qkv_proj"]})
    result = run_cli("train", str(recipe))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "qlora-kit: error: lora.target_modules: qkv_proj not found in the model; it has: " + ", ".join(LINEAR)
        + " (or use 'all-linear')")
    assert "Traceback" not in result.stderr
    run_dir = tmp_path / "runs" / "r"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert not (run_dir / "adapter").exists() and not (run_dir / "metrics.json").exists()
    assert read_events(run_dir)[-1]["event"] == "run_end" and read_events(run_dir)[-1]["status"] == "failed"


def test_packing_and_rslora_train(tmp_path):
    recipe = write_recipe(tmp_path / "p.yaml", data={"packing": True}, lora={"rslora": True},
                          train={"max_steps": 20, "logging_steps": 5})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "p"
    data = read_events(run_dir, "data")[0]
    assert data["train_rows"] == -(-data["train_tokens"] // 128)  # full 128-token blocks, the last one partial
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["use_rslora"] is True
    losses = step_losses(run_dir)
    assert losses[20] < losses[1]


def test_gradient_checkpointing_and_an_eval_file(tmp_path):
    from conftest import write_jsonl

    rows = [json.loads(line) for line in (ROOT / "qlora_kit/assets/tiny_chat.jsonl").read_text().splitlines()[:12]]
    eval_file = write_jsonl(tmp_path / "eval.jsonl", rows)
    recipe = write_recipe(tmp_path / "gc.yaml", data={"eval_path": str(eval_file)},
                          train={"max_steps": 10, "logging_steps": 5, "gradient_checkpointing": True})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "gc"
    assert read_events(run_dir, "data")[0]["eval_rows"] == 12
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["gradient_checkpointing"] is True
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval_loss"] < metrics["first_loss"]


def test_demo_exports_verified_gguf_that_answers_through_llama_cpp(demo_run):
    run_dir, _ = demo_run
    report = json.loads((run_dir / "gguf" / "export_report.json").read_text())
    assert set(report["exports"]) == {"q8_0", "q4_k_m"}
    q8 = report["exports"]["q8_0"]["verification"]
    assert q8["passed"] and q8["samples_from"] == "eval split" and q8["tokens"]["equal"] == q8["tokens"]["texts"]
    assert report["modelfile"]["template"] == "chatml"
    modelfile = (run_dir / "gguf" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-demo-q4_k_m.gguf\nTEMPLATE \"\"\"")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    # What `make demo` asks: a review of a place no training row mentions, answered by the 4-bit GGUF in llama.cpp.
    for prompt, answer in (("The trip to Lima was fun.", "positive"), ("The trip to Athens was boring.", "negative")):
        result = run_cli("chat", str(run_dir / "gguf" / "tiny-demo-q4_k_m.gguf"), "--prompt",
                         f"Is this review positive or negative? {prompt}")
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == answer



def test_q8_0_alone_refuses_llama_q_k_without_the_un_permute_on_a_trained_model(demo_run, tmp_path, monkeypatch):
    """The classic converter bug at Q8_0, with no F32/BF16/K-quant intermediate to catch it. A random model's
    attention carries little position information (the bug moved its logits only 0.024-0.047, inside Q8_0 noise);
    a trained one's does: measured 0.25 here (correct: 0.02; SmolLM2-135M: 0.79 vs 0.07)."""
    import dataclasses

    from qlora_kit.errors import StageError
    from qlora_kit.gguf.run import ExportOptions, export
    from qlora_kit.gguf.tensors import archs

    run_dir, _ = demo_run
    monkeypatch.setitem(archs.ARCHS, "LlamaForCausalLM",
                        dataclasses.replace(archs.ARCHS["LlamaForCausalLM"], permute_qk=False))
    with pytest.raises(StageError, match=r"verification failed for q8_0: relative logit error 0\.[1-9]\d* \(outside"):
        export(run_dir, ExportOptions(quant=["q8_0"]), tmp_path / "gguf")
    assert not list((tmp_path / "gguf").glob("*.gguf*"))

@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_evaluating_during_training_does_not_change_training(tmp_path, backend):
    """bitsandbytes 0.50 repacks a 4-bit weight in place for its bf16 CPU kernel on the first no-grad forward and
    never unpacks it: without a guard, an evaluation in mid-run changed every later training step of the hf
    backend (final loss 4.13 instead of 3.79 in 30 steps). Evaluating must not touch what trains."""
    losses = {}
    for name, eval_steps in (("plain", None), ("with-eval", 10)):
        recipe = write_recipe(tmp_path / f"{name}.yaml", model={"backend": backend},
                              data={"eval_split": 0.1}, train={"eval_steps": eval_steps},
                              output={"name": name})
        result = run_cli("train", str(recipe))
        assert result.returncode == 0, result.stderr[-3000:]
        losses[name] = step_losses(tmp_path / "runs" / name)
    assert len(losses["plain"]) == 30 and len(read_events(tmp_path / "runs" / "with-eval", "eval")) >= 3
    assert losses["with-eval"] == pytest.approx(losses["plain"], rel=1e-6)


def test_api_export_returns_typed_artifacts_of_real_files(demo_run, tmp_path):
    """qk.export on the demo run (in a child of this process: llama.cpp runs there): the GGUF verified through
    llama.cpp, its size and sha256 in the result, and the export's events appended to the run's log without a gap,
    ending it again with run_end (a stage run later on a finished run keeps run_end last)."""
    import qlora_kit as qk

    run_dir, _ = demo_run
    result = qk.export(run_dir, quant="f32", out=str(tmp_path / "gguf"), samples=2)
    assert isinstance(result, qk.ExportResult) and result.status == "complete"
    gguf = result.artifact("gguf")
    assert [Path(a.path).name for a in gguf] == ["tiny-demo-f32.gguf"]
    data = Path(gguf[0].path).read_bytes()
    assert gguf[0].bytes == len(data) and gguf[0].sha256 == hashlib.sha256(data).hexdigest()
    assert result.metrics["exports"]["f32"]["verification"]["passed"] is True
    events = assert_seq_without_gaps(run_dir)
    assert events[-2]["event"] == "artifact" and events[-2]["kind"] == "export_report"
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "complete"


def test_demo_ends_with_an_eval_verdict_that_the_interval_supports(demo_run):
    """The demo's held-out reviews name places no training row mentions: the tuned model must have learned the
    task. Tuned beats base and few-shot on exact match with a 95% interval above zero, every system is there, and
    the Q8_0 file keeps the merged model's score within 2 points."""
    run_dir, result = demo_run
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["rows"] == 28 and report["leaked_rows_excluded"] == 0
    assert list(report["results"]) == ["base", "fewshot", "adapter", "merged", "gguf:q4_k_m", "gguf:q8_0"]
    for name, r in report["results"].items():
        assert all(0.0 <= r[m] <= 1.0 for m in ("exact_match", "normalized_exact_match", "token_f1", "chrf")), name
        assert r["loss"] > 0 and r["perplexity"] >= 1.0 and r["prompt_tokens_per_request"] > 10
    results, verdict = report["results"], report["verdict"]
    assert verdict["outcome"] == "better" and verdict["interval95"][0] > 0 and verdict["tuned"] == "adapter"
    assert results["adapter"]["exact_match"] >= results["base"]["exact_match"] + 0.5
    assert results["adapter"]["exact_match"] >= results["fewshot"]["exact_match"]
    assert abs(results["gguf:q8_0"]["exact_match"] - results["merged"]["exact_match"]) <= 0.02
    assert results["adapter"]["loss"] < results["base"]["loss"]
    assert results["fewshot"]["prompt_tokens_per_request"] > results["adapter"]["prompt_tokens_per_request"]
    assert verdict["text"].startswith("Fine-tuning beat ") and verdict["text"] in result.stderr
    predictions = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 28 and all("Review" not in p["reference"] for p in predictions)


def test_a_bom_file_trains_and_skipped_rows_are_reported(tmp_path):
    # A UTF-8 byte-order mark (what Windows editors write) and, on line 3, a row saved as latin-1: with
    # data.on_bad_rows: skip the run drops exactly that row and says so on stderr and in events.jsonl.
    good = [json.dumps({"messages": [{"role": "user", "content": f"Say {i}"},
                                     {"role": "assistant", "content": f"{i}."}]}).encode() for i in range(8)]
    latin1 = '{"messages": [{"role": "user", "content": "Café?"}, {"role": "assistant", "content": "Oui."}]}'
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + b"\n".join(good[:2] + [latin1.encode("latin-1")] + good[2:]) + b"\n")
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(data), "on_bad_rows": "skip"},
                          train={"max_steps": 2, "batch_size": 4})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    offset = 3 + len(good[0]) + len(good[1]) + 2 + latin1.encode("latin-1").index(b"\xe9")
    note = (f"data.on_bad_rows is skip: skipped 1 of 9 rows of {data}: {data}:3 (not valid UTF-8 (at byte offset "
            f"{offset}); re-save the file as UTF-8)")
    assert f"qlora-kit: warning: {note}" in result.stderr.splitlines()
    run_dir = tmp_path / "runs" / "r"
    assert [e["message"] for e in read_events(run_dir, "warning")] == [note]
    assert read_events(run_dir, "data")[0]["train_rows"] == 8
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


def test_custom_model_code_is_not_run_and_the_built_in_class_is_said(tmp_path, tiny_model_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_custom.CustomLM"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": str(model)}, train={"max_steps": 1})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    note = (f"model.name: {model} ships its own model code (auto_map: AutoConfig: configuration_custom.CustomConfig, "
            "AutoModelForCausalLM: modeling_custom.CustomLM); model.trust_remote_code is false, so transformers' "
            "built-in LlamaForCausalLM is used instead (set model.trust_remote_code: true only if you trust that code)")
    assert [line for line in result.stderr.splitlines() if "warning" in line] == [f"qlora-kit: warning: {note}"]
    assert [e["message"] for e in read_events(tmp_path / "runs" / "r", "warning")] == [note]
