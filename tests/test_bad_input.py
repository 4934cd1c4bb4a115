"""Every user error from the foundation issue, through the real `train` CLI: one line naming the file, field or row,
exit code 2, no traceback, and no run directory left behind looking like a run."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, run_cli, write_jsonl, write_recipe

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def train_fails(tmp_path, recipe, expected: str, *extra: str):
    result = run_cli("train", str(recipe), *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"qlora-kit: error: {expected}"], result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    return result


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("model: {name: builtin:tiny-llama\ndata:\n  path: x\n")
    result = run_cli("train", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"qlora-kit: error: {bad}:") and "malformed YAML" in result.stderr


def test_mistyped_field(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", train={"max_step": 3})
    train_fails(tmp_path, recipe, f"{recipe}: train.max_step: unknown key (did you mean 'max_steps'?); allowed here: "
                "method, epochs, max_steps, lr, lr_scheduler, warmup_ratio, batch_size, grad_accum, optimizer, weight_decay, "
                "max_grad_norm, gradient_checkpointing, seed, device, logging_steps, eval_steps, save_steps, "
                "save_total_limit, report_to")


@pytest.mark.parametrize("lr, shown", [("0", "0"), ("-1e-4", "-0.0001")])
def test_zero_or_negative_lr(tmp_path, lr, shown):
    recipe = write_recipe(tmp_path / "r.yaml")
    train_fails(tmp_path, recipe, f"{recipe}: train.lr: {shown}: input should be greater than 0",
                "--set", f"train.lr={lr}")


def test_missing_model_dir(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": "./models/missing"})
    train_fails(tmp_path, recipe, f"{recipe}: model.name: ./models/missing: no such directory (relative paths are "
                f"read from the current directory, {ROOT}), and not a Hub id ORG/NAME, a GGUF (gguf:PATH, "
                "pkg:PACKAGE/FILE.gguf, ollama:NAME[:TAG]) or a built-in model: builtin:tiny-llama")


def test_model_dir_without_config(tmp_path):
    (tmp_path / "empty-model").mkdir()
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": str(tmp_path / "empty-model")})
    train_fails(tmp_path, recipe, f"{recipe}: model.name: {tmp_path / 'empty-model'} has no config.json; expected a "
                "Hugging Face model directory")


def test_missing_dataset(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(tmp_path / "nope.jsonl")})
    train_fails(tmp_path, recipe, f"{recipe}: data.path: {tmp_path / 'nope.jsonl'}: no such file")


def test_empty_dataset(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(tmp_path / "empty.jsonl")})
    train_fails(tmp_path, recipe, f"{recipe}: data.path: {tmp_path / 'empty.jsonl'}: the file is empty")


def test_dataset_of_blank_lines(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n\n")
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(tmp_path / "blank.jsonl")})
    train_fails(tmp_path, recipe, f"data.path: {tmp_path / 'blank.jsonl'}: no rows")


def test_broken_jsonl_line_names_the_line(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, '{"messages": [', GOOD, "not json"])
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(data)})
    train_fails(tmp_path, recipe, f"{data}:3: bad JSON (Expecting value at column 15) (and 1 more; run `qlora-kit "
                "data check` to list them)")


def test_wrong_column_names(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(data)})
    train_fails(tmp_path, recipe, f"{data}:1: cannot tell the data format from the columns (answer, question); "
                "expected one of: messages (openai); conversations (sharegpt); instruction/output (alpaca); "
                "prompt/chosen/rejected (preference); input/preferred_output/non_preferred_output (openai_dpo); "
                "prompt/completion/label (kto); prompt/completion (prompt_completion); text (text). Rename the columns, "
                "map them with data.columns (e.g. {prompt: question}), or set data.format")


def test_wrong_columns_for_a_forced_format(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(data), "format": "alpaca"})
    train_fails(tmp_path, recipe, f"{data}:1: missing column(s) instruction, output for format alpaca (row has: "
                "messages)")


def test_unknown_format(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", data={"format": "chatml"})
    train_fails(tmp_path, recipe, f"{recipe}: data.format: 'chatml' is not allowed; choose one of: auto, openai, "
                "sharegpt, alpaca, preference, openai_dpo, kto, prompt_completion, text")


def test_dataset_with_no_assistant_turns(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}] * 3)
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(data)})
    train_fails(tmp_path, recipe, f"{data}:1: the conversation has no assistant message to train on (and 2 more; "
                "run `qlora-kit data check` to list them)")


def test_output_dir_not_writable(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    recipe = write_recipe(tmp_path / "r.yaml", output={"dir": str(tmp_path / "blocker" / "runs")})
    train_fails(tmp_path, recipe, f"{recipe}: output.dir: {tmp_path / 'blocker' / 'runs'}: {tmp_path / 'blocker'} is "
                "a file, not a directory")


def test_unknown_builtin_and_template(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": "builtin:huge"}, data={"chat_template": "vicuna"})
    result = run_cli("train", str(recipe))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"qlora-kit: error: {recipe}: 2 problems:",
        "  - model.name: unknown built-in model 'builtin:huge'; available: builtin:tiny-llama",
        "  - data.chat_template: 'vicuna' is not a built-in template; choose auto (the tokenizer's) or one of: "
        "chatml, llama-3, alpaca, gemma, mistral, qwen3",
    ]


def test_resume_without_a_run(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml")
    train_fails(tmp_path, recipe, f"{tmp_path / 'runs' / 'r'}: nothing to resume (no such run); drop --resume to "
                "start it", "--resume")


def test_a_complete_run_names_what_to_do_instead_of_resume(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml")
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "complete"}))
    instead = (f"use it (qlora-kit eval|merge|export {run_dir}), --overwrite to train it again, or --set "
               "output.name=NEW_NAME for another run")
    for extra, expected in (((), f"{run_dir} already exists and is complete (nothing left to train); {instead}"),
                            (("--resume",), f"{run_dir}: this run is already complete, nothing to resume; {instead}")):
        result = run_cli("train", str(recipe), *extra)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [f"qlora-kit: error: {expected}"]


def test_cuda_requested_without_a_gpu(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    recipe = write_recipe(tmp_path / "r.yaml", model={"backend": "hf"}, train={"device": "cuda"})
    result = run_cli("train", str(recipe))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("qlora-kit: error: train.device: cuda was asked for but no CUDA "
                                                      "GPU is visible; use train.device: auto or cpu")
    assert not (tmp_path / "runs" / "r").exists()


def test_debug_shows_the_traceback(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(tmp_path / "nope.jsonl")})
    result = run_cli("train", str(recipe), "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_data_check_reports_every_problem_kind_with_rows(tmp_path):
    rows = [GOOD, "{bad", {}, {"messages": [{"role": "robot", "content": "x"}]},
            {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
            {"messages": [{"role": "user", "content": "only a question"}]}, GOOD, {"messages": []}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(data)})
    result = run_cli("data", "check", str(recipe))
    assert result.returncode == 2
    out = result.stdout
    assert "rows: 8 read, 2 valid, 6 with problems" in out
    for line in ("  bad JSON line (bad_json): 1", f"      {data}:2: bad JSON (Expecting property name enclosed in "
                 "double quotes at column 2)", "  empty row (empty_row): 1", f"      {data}:3: the row is empty",
                 "  unknown role (unknown_role): 1", "  missing content (missing_content): 1",
                 "  no assistant turn (no_assistant_turn): 1", "  no messages (no_messages): 1"):
        assert line in out.splitlines(), line
    assert result.stderr.strip() == (f"qlora-kit: error: 6 row(s) with problems; training would stop at the first "
                                     f"({data}:2: bad JSON (Expecting property name enclosed in double quotes at "
                                     "column 2)); fix them, or set data.on_bad_rows: skip to drop them")


def test_data_check_on_good_data_shows_stats_and_the_mask(tmp_path):
    result = run_cli("data", "check", str(write_recipe(tmp_path / "r.yaml", train={"epochs": 2, "max_steps": None})))
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "rows: 74 read, 74 valid, 0 with problems" in out
    assert any(line.startswith("tokens per example: min ") and " p95 " in line for line in out)
    assert "rows over max_seq_length (128): 0 (truncated when training)" in out
    assert any(line.startswith("training tokens: ") and " per epoch x 2 epochs = " in line for line in out)
    preview = result.stdout.split("masking preview", 1)[1]
    assert "[[" in preview and "<|im_end|>" in preview


def test_data_check_json_and_nothing_to_train(tmp_path):
    # A 6-token limit keeps only the start of every prompt: nothing would be trained.
    recipe = write_recipe(tmp_path / "r.yaml", model={"max_seq_length": 6})
    result = run_cli("data", "check", str(recipe), "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["total_trained_tokens"] == 0 and report["over_max_length"] == 74
    assert result.stderr.strip() == ("qlora-kit: error: data.path: no token would be trained in any of 74 rows (all "
                                     "masked or truncated away); run `qlora-kit data check` to see the masking")


def _long_rows(n: int) -> list[dict]:
    """Rows whose answer starts past token 32 of the tiny tokenizer: cut at 32, nothing of them is trained."""
    prompt = "please read all of this carefully " * 20
    return [{"messages": [{"role": "user", "content": f"{prompt}question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(n)]


def test_data_check_refuses_what_train_refuses_in_the_same_words(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", _long_rows(10))
    recipe = write_recipe(tmp_path / "r.yaml", model={"max_seq_length": 32}, data={"path": str(data)})
    expected = ("qlora-kit: error: data.path: no token would be trained in any of 10 rows (all masked or truncated "
                "away); run `qlora-kit data check` to see the masking")
    checked = run_cli("data", "check", str(recipe))
    assert checked.returncode == 2
    assert "rows with no trained token (dropped when training): 10" in checked.stdout.splitlines()
    assert checked.stderr.splitlines() == [expected]
    trained = run_cli("train", str(recipe))
    assert trained.returncode == 2 and trained.stderr.splitlines()[-1] == expected


def test_data_check_warns_when_some_rows_would_be_dropped(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", _long_rows(2) + [GOOD] * 3)
    recipe = write_recipe(tmp_path / "r.yaml", model={"max_seq_length": 32}, data={"path": str(data)})
    result = run_cli("data", "check", str(recipe))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["qlora-kit: warning: data.path: 2 of 5 training rows have no trained token "
                                          "(masked or truncated away at model.max_seq_length 32); training drops them"]


def test_data_check_counts_held_out_rows_apart_from_training_rows(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": "builtin:tiny-demo"})
    alone = json.loads(run_cli("data", "check", str(recipe), "--json").stdout)
    result = run_cli("data", "check", str(recipe), "--set", "data.eval_path=builtin:tiny-demo-heldout")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "rows: 154 read, 154 valid, 0 with problems" in out
    assert "held-out rows (data.eval_path): 28 read, 28 valid, 0 with problems" in out
    assert "training rows: 154, held-out rows: 28 (data.eval_path); the counts below are of the training rows" in out
    assert f"training tokens: {alone['total_tokens']:,} per pass over the data ({alone['total_trained_tokens']:,} " \
           "trained); train.max_steps = 30 decides how many passes" in out
    split = json.loads(run_cli("data", "check", str(recipe), "--json", "--set", "data.eval_split=0.1").stdout)
    assert (split["rows"], split["train_rows"], split["held_out_rows"]) == (154, 139, 15)  # as `train` splits them
    assert split["total_tokens"] < alone["total_tokens"]


def test_hub_dataset_that_cannot_be_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here; the message must still be one clear line
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": "hf:someone/does-not-exist"})
    result = run_cli("train", str(recipe))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("qlora-kit: error: data.path: cannot load Hub dataset "
                                            "'someone/does-not-exist' split 'train': ")
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def _latin1_dataset(tmp_path):
    """Three good rows and, on line 2, one saved as latin-1 (é is the single byte 0xe9)."""
    good = (json.dumps(GOOD) + "\n").encode()
    bad = json.dumps({"messages": [{"role": "user", "content": "Café?"}, {"role": "assistant", "content": "Oui."}]},
                     ensure_ascii=False).encode("latin-1") + b"\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(good + bad + good + good)
    return path, len(good) + bad.index(b"\xe9")


def test_data_check_names_the_line_that_is_not_utf8(tmp_path):
    data, offset = _latin1_dataset(tmp_path)
    result = run_cli("data", "check", str(write_recipe(tmp_path / "r.yaml", data={"path": str(data)})))
    assert result.returncode == 2
    assert "rows: 4 read, 3 valid, 1 with problems" in result.stdout.splitlines()
    problem = f"{data}:2: not valid UTF-8 (at byte offset {offset}); re-save the file as UTF-8"
    assert "  not valid UTF-8 (bad_utf8): 1" in result.stdout.splitlines()
    assert f"      {problem}" in result.stdout.splitlines()
    assert problem in result.stderr and "data.on_bad_rows: skip" in result.stderr
    skipping = run_cli("data", "check", str(tmp_path / "r.yaml"), "--set", "data.on_bad_rows=skip")
    assert skipping.returncode == 0, skipping.stderr
    assert "  data.on_bad_rows is skip: training drops these 1 row(s)" in skipping.stdout.splitlines()


def test_train_stops_on_a_row_that_is_not_utf8(tmp_path):
    data, offset = _latin1_dataset(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": str(data)})
    train_fails(tmp_path, recipe, f"{data}:2: not valid UTF-8 (at byte offset {offset}); re-save the file as UTF-8")


def _model_copy(tmp_path, tiny_model_dir, **config_changes):
    """The tiny model with config.json edited; None values remove a key."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(config_changes)
    (model / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return model


def test_a_config_transformers_cannot_build_is_one_line_for_train_data_check_and_export(tmp_path, tiny_model_dir):
    # A Llama checkpoint labelled Falcon: FalconConfig refuses Llama's head_dim (transformers 5.17 logs the whole
    # config, then raises AttributeError).
    model = _model_copy(tmp_path, tiny_model_dir, model_type="falcon", architectures=["FalconForCausalLM"])
    expected = (f"model.name: {model}: transformers cannot build a config from config.json (model_type 'falcon', "
                "FalconForCausalLM): AttributeError: property 'head_dim' of 'FalconConfig' object has no setter; "
                "check that config.json belongs with these weights")
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": str(model), "backend": "hf"})
    train_fails(tmp_path, recipe, expected)
    result = run_cli("data", "check", str(recipe))
    assert result.returncode == 2 and result.stderr.splitlines() == [f"qlora-kit: error: {expected}"]
    # export reads a model directory without a recipe (transformers not yet imported): the same line, no dump.
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"GGUF")
    for args in (("export", str(model)), ("export", "--check-only", str(gguf), str(model))):
        result = run_cli(*args)
        assert result.returncode == 2 and result.stderr.splitlines() == [
            f"qlora-kit: error: {expected.removeprefix('model.name: ')}"], args
    assert not (model / "gguf").exists()
    debug = run_cli("export", str(model), "--debug")  # the rest: transformers' own error, as the cause
    assert "AttributeError: property 'head_dim'" in debug.stderr and "direct cause" in debug.stderr


def test_weights_that_do_not_fit_the_config_or_are_cut_short_are_one_line(tmp_path, tiny_model_dir):
    model = _model_copy(tmp_path, tiny_model_dir, intermediate_size=1024)
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": str(model), "backend": "hf"})
    train_fails(tmp_path, recipe, f"model.name: {model / 'model.safetensors'}: model.layers.0.mlp.gate_proj.weight "
                "has shape [512, 256] but config.json implies [1024, 256]; check that config.json belongs with these "
                "weights")
    (model / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size - 1000)
    train_fails(tmp_path, recipe, f"model.name: {weights}: truncated ({size - 1000:,} of {size:,} bytes); copy or "
                "download it again")


AUTO_MAP = {"AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomLM"}


def test_custom_model_code_without_a_built_in_class_is_refused(tmp_path, tiny_model_dir):
    model = _model_copy(tmp_path, tiny_model_dir, model_type="custom-llama", auto_map=AUTO_MAP)
    (model / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": str(model), "backend": "hf"})
    train_fails(tmp_path, recipe, f"model.name: {model} needs the model code it ships (auto_map: AutoConfig: "
                "configuration_custom.CustomConfig, AutoModelForCausalLM: modeling_custom.CustomLM) and transformers "
                "has no built-in causal LM for model_type 'custom-llama'; set model.trust_remote_code: true only if "
                "you trust that code")
