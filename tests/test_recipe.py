"""Recipe parsing, overrides, `validate` messages, and the fast paths (no torch at `--help`/`validate`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, run_cli, write_recipe
from qlora_kit.errors import RecipeError, UsageError
from qlora_kit.recipe import dump_recipe, load_recipe
from qlora_kit.recipe.checks import check_paths

SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))


def test_recipes_directory_has_the_promised_models():
    names = {p.stem for p in SHIPPED}
    for expected in ("tiny-demo", "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "llama-3.2-1b-instruct",
                     "llama-3.2-3b-instruct", "llama-3.1-8b", "mistral-7b-instruct", "gemma-2-2b-it"):
        assert expected in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_documents_its_command(path):
    recipe = load_recipe(path)
    check_paths(recipe, str(path))
    header = path.read_text().splitlines()[:4]
    assert any(f"qlora-kit train recipes/{path.name}" in line for line in header), "header must give the command"
    assert recipe.output.name == path.stem


def test_all_problems_reported_at_once_with_paths_values_and_suggestions(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: builtin:tiny-llama\n  backend: unslot\ndata:\n  pth: x.jsonl\n"
                   "lora:\n  r: 0\ntrain:\n  learning_rate: 1e-4\n  optimizer: adam\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(bad)
    problems = info.value.problems
    assert problems == [
        "model.backend: 'unslot' is not allowed; choose one of: unsloth, hf (did you mean 'unsloth'?)",
        "data.path: required but missing (Training data: a local .jsonl/.json/.csv/.parquet file, 'hf:ORG/NAME' "
        "for a Hub dataset, or 'builtin:tiny-chat' (the small chat dataset shipped with qlora-kit).)",
        "data.pth: unknown key (did you mean 'path'?); allowed here: path, split, format, columns, chat_template, "
        "system_prompt, train_on, train_reasoning, eval_split, eval_path, packing, max_rows, on_bad_rows",
        "lora.r: 0: input should be greater than 0",
        "train.optimizer: 'adam' is not allowed; choose one of: auto, adamw_torch, adamw_8bit, paged_adamw_8bit, "
        "adafactor, sgd",
        "train.learning_rate: unknown key (did you mean 'lr'?); allowed here: method, epochs, max_steps, lr, lr_scheduler, "
        "warmup_ratio, batch_size, grad_accum, optimizer, weight_decay, max_grad_norm, gradient_checkpointing, "
        "seed, device, logging_steps, eval_steps, save_steps, save_total_limit, report_to",
    ]


def test_set_overrides_parse_yaml_types_and_create_sections(tmp_path):
    path = write_recipe(tmp_path / "r.yaml")
    recipe = load_recipe(path, ["train.lr=1e-4", "data.packing=true", "lora.target_modules=[q_proj, v_proj]",
                                "output.name=other"])
    assert recipe.train.lr == pytest.approx(1e-4)
    assert recipe.data.packing is True
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.output.name == "other"


@pytest.mark.parametrize("item", ["train.lr", "=3", "train..lr=1"])
def test_bad_set_syntax_is_a_usage_error(tmp_path, item):
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        load_recipe(write_recipe(tmp_path / "r.yaml"), [item])


def test_resolved_recipe_dump_round_trips(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml"))
    again = tmp_path / "again.yaml"
    again.write_text(dump_recipe(recipe))
    assert load_recipe(again) == recipe.model_copy(update={"output": recipe.output.model_copy(update={"name": "r"})})


def test_validate_cli_malformed_yaml_names_line_and_column(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  name: [unclosed\ndata:\n  path: x\n")
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith(f"qlora-kit: error: {bad}:3:")
    assert "malformed YAML" in result.stderr and "Traceback" not in result.stderr


def test_validate_cli_negative_lr_and_missing_paths(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model={"name": str(tmp_path / "nope")},
                        data={"path": str(tmp_path / "missing.jsonl")}, train={"lr": -0.1})
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    # One pass: the schema's problems and the paths' together, not the paths only once lr is fixed.
    assert "train.lr: -0.1: input should be greater than 0" in result.stderr
    assert f"model.name: {tmp_path / 'nope'}: no such directory" in result.stderr
    assert f"data.path: {tmp_path / 'missing.jsonl'}: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_shows_every_problem_in_one_pass_with_suggestions_for_registry_names(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", model={"name": "builtin:tiny-lama"},
                        data={"path": "builtin:tiny-chta", "chat_template": "llama3"}, train={"max_step": 3})
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"qlora-kit: error: {path}: 4 problems:",
        "  - train.max_step: unknown key (did you mean 'max_steps'?); allowed here: method, epochs, max_steps, lr, "
        "lr_scheduler, warmup_ratio, batch_size, grad_accum, optimizer, weight_decay, max_grad_norm, "
        "gradient_checkpointing, seed, device, logging_steps, eval_steps, save_steps, save_total_limit, report_to",
        "  - model.name: unknown built-in model 'builtin:tiny-lama'; available: builtin:tiny-llama (did you mean "
        "'builtin:tiny-llama'?)",
        "  - data.path: unknown built-in dataset 'builtin:tiny-chta'; available: builtin:tiny-chat, builtin:tiny-demo, "
        "builtin:tiny-demo-heldout, builtin:iso-dates, builtin:iso-dates-eval, builtin:short-answers, "
        "builtin:short-answers-eval, builtin:tool-calls, builtin:tool-calls-eval, builtin:tiny-prefs, builtin:tiny-kto "
        "(did you mean 'builtin:tiny-chat'?)",
        "  - data.chat_template: 'llama3' is not a built-in template; choose auto (the tokenizer's) or one of: chatml, "
        "llama-3, alpaca, gemma, mistral, qwen3 (did you mean 'llama-3'?)",
    ]


def test_quant_names_follow_one_rule_in_any_case(tmp_path):
    from qlora_kit.gguf.tensors.quants import get_quant_type

    path = write_recipe(tmp_path / "r.yaml")
    recipe = load_recipe(path, ["export.quant=[Q8_0, Q4_K_M]"])
    assert recipe.export.quant == ["q8_0", "q4_k_m"]  # stored as the registry spells them
    assert [get_quant_type(q).name for q in ("Q8_0", "Q4_K_M")] == recipe.export.quant  # what --quant accepts
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["export.quant=[Q8_O]"])
    assert info.value.problems == ["export.quant.0: 'Q8_O' is not allowed; choose one of: f32, f16, bf16, q8_0, "
                                   "q4_0, q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k (did you mean 'q8_0'?)"]


def test_validate_cli_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = run_cli("validate", str(write_recipe(tmp_path / "r.yaml", output={"dir": str(blocker / "runs")})))
    assert result.returncode == 2
    assert f"output.dir: {blocker / 'runs'}: {blocker} is a file, not a directory" in result.stderr


def test_validate_and_help_do_not_import_torch_or_unsloth(tmp_path):
    path = write_recipe(tmp_path / "r.yaml")
    code = (
        "import sys; from qlora_kit.cli import main\n"
        f"assert main(['validate', '-q', {str(path)!r}]) == 0\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'unsloth', 'trl', 'peft', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_unknown_data_format_is_a_recipe_error(tmp_path):
    result = run_cli("validate", str(write_recipe(tmp_path / "r.yaml", data={"format": "jsonl"})))
    assert result.returncode == 2
    assert "data.format: 'jsonl' is not allowed; choose one of: auto, openai, sharegpt, alpaca, preference, openai_dpo, kto, prompt_completion, " \
           "text" in result.stderr


def test_merge_section_validates_sizes_and_choices(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", merge={"enabled": True, "max_shard_size": "lots", "base": "orig"})
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.problems == [
        "merge.base: 'orig' is not allowed; choose one of: dequantized, original (did you mean 'original'?)",
        "merge.max_shard_size: 'lots': 'lots' is not a size; use e.g. 500MB, 2GB or 1GiB",
    ]
    assert load_recipe(path, ["merge.max_shard_size=500MB", "merge.base=original"]).merge.base == "original"
