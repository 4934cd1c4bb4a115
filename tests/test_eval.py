"""`qlora-kit eval` on a real (tiny, deliberately useless) run: the verdict says so, leaked rows are excluded with a
warning, custom scorers, and bad input. The demo run's eval (tuned beats base, GGUF keeps it) is in test_train."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT, plugin_env, read_events, run_cli, write_jsonl, write_recipe

pytestmark = pytest.mark.slow

ASSETS = ROOT / "qlora_kit" / "assets"


@pytest.fixture(scope="module")
def useless_run(tmp_path_factory):
    """Two steps at a learning rate of 1e-9: an adapter that cannot have learned anything."""
    tmp = tmp_path_factory.mktemp("useless")
    recipe = write_recipe(tmp / "useless.yaml", data={"path": "builtin:tiny-demo",
                                                      "eval_path": "builtin:tiny-demo-heldout"},
                          train={"max_steps": 2, "lr": 1e-9, "save_steps": 1000})
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "runs" / "useless"


def test_useless_adapter_gets_a_verdict_that_fine_tuning_did_not_help(useless_run, tmp_path):
    result = run_cli("eval", str(useless_run), "--systems", "base,fewshot,adapter", "--max-new-tokens", "4",
                     "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["rows"] == 28 and report["rows_from"] == "the run's eval split"
    assert report["verdict"]["outcome"] in ("unclear", "worse")
    assert report["verdict"]["text"].startswith(("Fine-tuning did not clearly help", "Fine-tuning did NOT help"))
    assert report["verdict"]["text"] in result.stdout
    base, adapter = report["results"]["base"], report["results"]["adapter"]
    assert adapter["loss"] == pytest.approx(base["loss"], abs=1e-3), "lr 1e-9 leaves the model as it was"
    assert report["results"]["fewshot"]["prompt_tokens_per_request"] > base["prompt_tokens_per_request"] + 30
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 28 and set(json.loads(lines[0])["systems"]) == {"base", "fewshot", "adapter"}
    for name in ("report.md", "scores.png", "stages.png"):
        assert (tmp_path / "eval" / name).is_file(), name


def test_rows_that_repeat_training_rows_are_excluded_with_a_warning(useless_run, tmp_path):
    train_rows = (ASSETS / "tiny_demo.jsonl").read_text().splitlines()[:3]
    held_rows = (ASSETS / "tiny_demo_heldout.jsonl").read_text().splitlines()[:5]
    data = write_jsonl(tmp_path / "mixed.jsonl", train_rows + held_rows)
    result = run_cli("eval", str(useless_run), "--systems", "base,adapter", "--data", str(data), "--max-new-tokens",
                     "2", "--out", str(tmp_path / "eval"), "--events", str(tmp_path / "events.jsonl"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["rows"] == 5 and report["leaked_rows_excluded"] == 3
    assert report["warnings"][0] == (f"3 held-out row(s) also occur in the training data and were excluded "
                                     f"(first: {data}:1)")
    assert "only 5 held-out rows: the 95% interval on any difference is wide" in report["warnings"][1]
    warnings = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()
                if json.loads(line)["event"] == "warning"]
    assert [w["message"] for w in warnings] == report["warnings"]
    # The eval stage reports into the run's own event log too, numbered after training.
    stages = [(e["name"], e["status"]) for e in read_events(useless_run, "stage") if e["name"] == "eval"]
    assert ("eval", "start") in stages and ("eval", "end") in stages


def test_a_custom_scorer_is_reported_and_one_that_raises_is_one_line(useless_run, tmp_path):
    env = plugin_env("plugins")
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "qlora_kit", "eval", str(useless_run), "--systems", "adapter",
                               "--samples", "3", "--max-new-tokens", "2", "--out", str(tmp_path / "eval"), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)

    ok = run("--scorer", "qk_test_plugin:label_scorer")
    assert ok.returncode == 0, ok.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["metric"] == "custom" and 0.0 <= report["results"]["adapter"]["custom"] <= 1.0
    bad = run("--scorer", "qk_test_plugin:raising_scorer")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == ("qlora-kit: error: eval.scorer raised on "
                                                   "builtin:tiny-demo-heldout:1: ValueError: no score for you")
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["metric"] == "custom", \
        "a failed eval leaves the previous complete report alone"


@pytest.mark.parametrize("args, message", [
    (["--systems", "merged"], "--systems merged: {run}/merged does not exist; make it with: qlora-kit merge {run}"),
    (["--systems", "gguf:q4_k_m"], "--systems gguf:q4_k_m: {run}/gguf/useless-q4_k_m.gguf does not exist; make it "
                                   "with: qlora-kit export {run} --quant q4_k_m"),
    (["--systems", "tuned"], "--systems: unknown system 'tuned'; choose from base, fewshot, adapter, reference, merged, "
                             "gguf:TYPE (e.g. gguf:q4_k_m), recorded:FILE (an old model's answers, .jsonl)"),
    (["--systems", "adapter,recorded:nowhere.jsonl"], "--systems recorded:nowhere.jsonl: no such file"),
    (["--scorer", "no_such_module:score"], "eval.scorer no_such_module:score: cannot load it: ModuleNotFoundError: "
                                           "No module named 'no_such_module'"),
    (["--samples", "0"], "--samples: 0 must be at least 1"),
])
def test_bad_eval_input_is_one_line_exit_2(useless_run, tmp_path, args, message):
    result = run_cli("eval", str(useless_run), *args, "--out", str(tmp_path / "eval"))
    assert result.returncode == 2
    assert result.stderr.strip() == "qlora-kit: error: " + message.format(run=useless_run)
    assert not (tmp_path / "eval").exists()


def test_eval_needs_a_finished_run_and_rows_to_score(useless_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(useless_run, copy)
    status = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**status, "status": "interrupted"}))
    result = run_cli("eval", str(copy))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"qlora-kit: error: {copy}: the run never finished (status: interrupted); eval "
                                     "needs a complete run; continue it with `qlora-kit train RECIPE --resume`")
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    result = run_cli("eval", str(useless_run), "--data", str(empty), "--out", str(tmp_path / "eval"))
    assert result.returncode == 2 and str(empty) in result.stderr and "Traceback" not in result.stderr


def test_recorded_answers_of_the_old_model_are_one_more_system_in_the_verdict(useless_run, tmp_path):
    """The migration check: a perfect old model (the gold answers, saved in the three shapes) beats the useless
    adapter; a bad one (always "banana") does not. Lines for training prompts are not scored; a file that misses
    held-out rows is refused before anything is written."""
    held = [json.loads(line) for line in (ASSETS / "tiny_demo_heldout.jsonl").read_text().splitlines()]
    shapes = [lambda p, a: {"messages": p, "answer": a},
              lambda p, a: {"messages": p, "response": {"choices": [{"message": {"role": "assistant", "content": a}}]}},
              lambda p, a: {"messages": p + [{"role": "assistant", "content": a}]}]
    perfect = write_jsonl(tmp_path / "perfect.jsonl", [shapes[i % 3](r["messages"][:-1], r["messages"][-1]["content"])
                                                       for i, r in enumerate(held)])
    training = (ASSETS / "tiny_demo.jsonl").read_text().splitlines()[:2]
    bad = write_jsonl(tmp_path / "bad.jsonl", training + [{"messages": r["messages"][:-1], "answer": "banana"}
                                                          for r in reversed(held)])
    result = run_cli("eval", str(useless_run), "--systems", f"adapter,recorded:{perfect},recorded:{bad}",
                     "--max-new-tokens", "4", "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    old, banana, adapter = (report["results"][n] for n in (f"recorded:{perfect}", f"recorded:{bad}", "adapter"))
    assert old["exact_match"] == old["chrf"] == 1.0 and banana["exact_match"] == 0.0
    assert old["loss"] is None and old["perplexity"] is None and old["prompt_tokens_per_request"] is None
    assert adapter["exact_match"] == 0.0 and adapter["loss"] > 0, "lr 1e-9: the adapter learned nothing"
    assert report["recorded"][f"recorded:{bad}"] == {"file": str(bad), "lines": 30, "rows_scored": 28,
                                                     "prompts_not_scored": 2, "prompts_matching_no_row": 0}
    lost, same = report["verdict"]["recorded"]
    assert report["verdict"]["outcome"] == "none", "no base or fewshot: nothing said about fine-tuning itself"
    assert lost["outcome"] == "worse" and lost["interval95"] == [-1.0, -1.0]
    assert lost["text"] == (f"The tuned model (adapter) did NOT match the recorded model ({perfect}): it scores 100 "
                            "points of exact match lower (95% interval -100 to -100 points over 28 rows).")
    assert same["outcome"] == "matches" and same["difference"] == 0.0
    assert report["verdict"]["text"] == f"{lost['text']} {same['text']}" and report["verdict"]["text"] in result.stdout
    assert "loss n/a  prompt tokens n/a" in result.stdout
    first = json.loads((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()[0])
    assert first["systems"][f"recorded:{perfect}"]["prediction"] == first["reference"]
    assert first["systems"][f"recorded:{bad}"] == {"prediction": "banana", "scores": first["systems"][
        f"recorded:{bad}"]["scores"], "prompt_tokens": None, "generated_tokens": None, "loss": None}
    assert "no prompt-token figure" in (tmp_path / "eval" / "report.md").read_text()

    short = write_jsonl(tmp_path / "short.jsonl", (tmp_path / "perfect.jsonl").read_text().splitlines()[:27])
    refused = run_cli("eval", str(useless_run), "--systems", f"adapter,recorded:{short}", "--out",
                      str(tmp_path / "refused"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"qlora-kit: error: --systems recorded:{short}: no recorded answer for held-out row "
        "builtin:tiny-demo-heldout:28 (1 of 28 have none)")
    assert not (tmp_path / "refused").exists()
