"""One name per concept on the command line (issue #31): plan's --device/--gpu, chat's --max-new-tokens, a help
text with its default on every flag, --set on every stage command, did-you-mean for --set keys, and the recipe's
fields as a Markdown table (`qlora-kit schema --table`). Fast: nothing here loads a model."""

from __future__ import annotations

import argparse

import pytest

from conftest import run_cli_here, write_recipe

import qlora_kit as qk
from qlora_kit.cli import build_parser
from qlora_kit.cli.options import stage_options
from qlora_kit.errors import UsageError
from qlora_kit.recipe import Recipe, load_recipe
from qlora_kit.recipe.options import STAGE_OPTIONS, ExportOptions, MergeOptions

SECTIONS = "model, data, lora, train, preference, grpo, merge, export, eval, bench, distributed, output"
MERGE_KEYS = ("merge.base, merge.dtype, merge.max_shard_size, merge.verify, merge.compare, merge.samples, "
              "merge.allow_mismatch")


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every subcommand, nested ones (`data check`) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


# --- every flag: help that states its default ------------------------------------------------------------------

SWITCHES = (argparse._HelpAction, argparse._VersionAction, argparse._StoreTrueAction, argparse._StoreFalseAction,
            argparse._StoreConstAction)


def _model_default(path: tuple[str, ...], dest: str):
    """A stage-option flag's default lives in its options model (argparse holds SUPPRESS)."""
    model = STAGE_OPTIONS.get(path[-1], (None,))[0]
    return model.model_fields[dest].default if model and dest in model.model_fields else None


def test_every_option_has_help_that_states_its_default():
    """The rule, for every option of every subcommand except --help, --version and on/off switches (store_true,
    store_false: their default is "off", and --no-X says what it turns off):
    1. it has help; a hidden option (help=SUPPRESS) is allowed only as an alias of a shown option (the same dest);
    2. the help says "default: " followed by the default: where the default is a value (argparse's, or for a stage
       option its options model's), that value's text comes after "default: " (lists comma-separated);
       where the default is None or [] (nothing given), what comes after "default: " is what happens then
       ("default: none", "default: the recipe's model.backend", "default: RUN_DIR/merged")."""
    problems = []
    for path, parser in _commands(build_parser()):
        options = [a for a in parser._actions if a.option_strings and not isinstance(a, SWITCHES)]
        shown = {a.dest for a in options if a.help != argparse.SUPPRESS}
        for action in options:
            where = f"qlora-kit {' '.join(path)} {action.option_strings[0]}"
            if action.help == argparse.SUPPRESS:
                if action.dest not in shown:
                    problems.append(f"{where}: hidden, and not an alias of a shown option")
                continue
            if not action.help or "default: " not in action.help:
                problems.append(f"{where}: the help does not say 'default: ...': {action.help!r}")
                continue
            default = _model_default(path, action.dest) if action.default is argparse.SUPPRESS else action.default
            text = ",".join(map(str, default)) if isinstance(default, list) else str(default)
            stated = action.help.split("default: ", 1)[1].strip(" )")
            if default not in (None, []) and text not in stated:
                problems.append(f"{where}: default {text!r} not in the help: {action.help!r}")
            if not stated:
                problems.append(f"{where}: 'default: ' says nothing")
    assert problems == []


def test_every_subcommand_is_walked():
    names = {" ".join(path) for path, _ in _commands(build_parser())}
    assert {"train", "validate", "data check", "merge", "export", "eval", "chat", "serve", "server", "bench",
            "plan", "doctor", "schema", "events-schema"} <= names


# --- chat: --max-new-tokens, --max-tokens a hidden alias ---------------------------------------------------------

def test_chat_max_new_tokens_with_the_old_name_hidden():
    parser = build_parser()
    assert parser.parse_args(["chat", "m.gguf"]).max_new_tokens == 128
    assert parser.parse_args(["chat", "m.gguf", "--max-new-tokens", "7"]).max_new_tokens == 7
    assert parser.parse_args(["chat", "m.gguf", "--max-tokens", "9"]).max_new_tokens == 9  # old scripts still work
    chat = dict(_commands(parser))[("chat",)]
    assert "--max-new-tokens N" in chat.format_help() and "--max-tokens" not in chat.format_help()


# --- plan: --device auto|cpu|cuda, --gpu NAME --------------------------------------------------------------------

def test_plan_device_is_the_same_choice_as_bench_and_train():
    plan, bench = STAGE_OPTIONS["plan"][0], STAGE_OPTIONS["bench"][0]
    assert plan.model_fields["device"].annotation == bench.model_fields["device"].annotation \
        == Recipe.model_fields["train"].annotation.model_fields["device"].annotation
    assert plan().device == "auto" and plan().gpu is None


def test_plan_by_gpu_name_from_the_api(tmp_path):
    plan = qk.plan(write_recipe(tmp_path / "r.yaml"), gpu="rtx4090")
    assert plan.device == "rtx4090" and plan.budget_bytes == 24 * 2**30 and plan.fits is True


@pytest.mark.parametrize("fields,message", [
    ({"device": "t4"}, "qk.plan: device='t4': auto, cpu or cuda; for a GPU by name use gpu='t4'"),
    ({"gpu": "rtx9090"}, "qk.plan: gpu: unknown GPU 'rtx9090'; known: h200, h100, "),
    ({"gpu": "t4", "device": "cpu"}, "qk.plan: gpu: t4 is a CUDA GPU, which does not go with device cpu; give one "
     "or the other"),
])
def test_plan_gpu_mistakes_from_the_api(fields, message):
    with pytest.raises(UsageError) as err:
        qk.plan("nowhere.yaml", **fields)
    assert str(err.value).startswith(message)


def test_plan_device_given_a_gpu_name_on_the_command_line(tmp_path, capsys):
    r = run_cli_here(capsys, "plan", str(write_recipe(tmp_path / "r.yaml")), "--device", "t4")
    assert (r.returncode, r.stderr) == (2, "qlora-kit: error: --device t4: auto, cpu or cuda; for a GPU by name use "
                                           "--gpu t4\n")


# --- --set on merge, export, eval --------------------------------------------------------------------------------

def _stage(argv: list[str]):
    command = argv[0]
    args = build_parser().parse_args([*argv[:1], "TARGET", *argv[1:]])
    return stage_options(args, STAGE_OPTIONS[command][0], command)


def test_stage_commands_take_set_like_their_flags():
    assert _stage(["merge", "--set", "merge.max_shard_size=1GB"]) == MergeOptions(max_shard_size="1GB")
    assert _stage(["merge", "--set", "merge.verify=false", "--set", "merge.samples=3"]) == \
        MergeOptions(verify=False, samples=3)
    assert _stage(["export", "--set", "export.quant=[q8_0]"]) == ExportOptions(quant=["q8_0"])
    assert _stage(["export", "--set", "export.quant=[q8_0]"]) == _stage(["export", "--quant", "q8_0"])
    assert _stage(["eval", "--set", "eval.systems=[base, adapter]", "--set", "eval.gguf_drop=0.1"]).systems == \
        ["base", "adapter"]
    assert _stage(["merge", "--set", "merge.samples=3", "--set", "merge.samples=5"]).samples == 5  # the last wins


@pytest.mark.parametrize("argv,message", [
    (["--set", "merge.samplez=3"], f"--set 'merge.samplez=3': merge.samplez is not a merge option (did you mean "
     f"merge.samples?); allowed: {MERGE_KEYS}"),
    (["--set", "samples=3"], f"--set 'samples=3': samples is not a merge option (did you mean merge.samples?); "
     f"allowed: {MERGE_KEYS}"),
    (["--set", "train.lr=0.1"], f"--set 'train.lr=0.1': train.lr is not a merge option; allowed: {MERGE_KEYS}"),
    (["--set", "merge.enabled=true"], f"--set 'merge.enabled=true': merge.enabled is not a merge option; allowed: "
     f"{MERGE_KEYS}"),
    (["--set", "merge.samples=3", "--samples", "4"], "--set 'merge.samples=3' and --samples give the same option; "
     "give one of them"),
    (["--set", "merge.verify=false", "--no-verify"], "--set 'merge.verify=false' and --no-verify give the same "
     "option; give one of them"),
    (["--set", "merge.samples=0"], "--set merge.samples: 0 must be at least 1"),
    (["--set", "merge.max_shard_size=lots"], "--set merge.max_shard_size: 'lots' is not a size"),
    (["--set", "merge.samples"], "--set 'merge.samples': expected KEY=VALUE"),
])
def test_stage_set_mistakes_are_one_line(argv, message):
    with pytest.raises(UsageError) as err:
        _stage(["merge", *argv])
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("command", ["merge", "export", "eval"])
def test_a_bad_stage_set_stops_the_command_before_it_starts(tmp_path, capsys, command):
    r = run_cli_here(capsys, command, str(tmp_path / "no-run"), "--set", f"{command}.samplez=2")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"qlora-kit: error: --set '{command}.samplez=2': {command}.samplez is not a "
                               f"{command} option (did you mean {command}.samples?); allowed: {command}.")


# --- did-you-mean for the recipe's --set ---------------------------------------------------------------------------

@pytest.mark.parametrize("item,message", [
    ("max_steps=10", f"--set 'max_steps=10': unknown key max_steps (did you mean train.max_steps?); recipe sections: "
     f"{SECTIONS}"),
    ("samples=4", "--set 'samples=4': unknown key samples (did you mean merge.samples, export.samples or "
     f"eval.samples?); recipe sections: {SECTIONS}"),
    ("trian.lr=1e-4", f"--set 'trian.lr=1e-4': unknown key trian.lr (did you mean train.lr?); recipe sections: "
     f"{SECTIONS}"),
    ("train.learning_rate=1e-4", "--set 'train.learning_rate=1e-4': unknown key train.learning_rate (did you mean "
     "train.lr?); allowed in train: method, epochs, max_steps, lr, "),
    ("train.max_step=3", "--set 'train.max_step=3': unknown key train.max_step (did you mean train.max_steps?); "
     "allowed in train: method, epochs, max_steps, lr, "),
    ("merge.lr=3", "--set 'merge.lr=3': unknown key merge.lr (did you mean train.lr?); allowed in merge: base, "),
    ("nothing_like_it=1", f"--set 'nothing_like_it=1': unknown key nothing_like_it; recipe sections: {SECTIONS}"),
])
def test_set_keys_get_a_did_you_mean(tmp_path, item, message):
    with pytest.raises(UsageError) as err:
        load_recipe(write_recipe(tmp_path / "r.yaml"), [item])
    assert str(err.value).startswith(message)


def test_dict_overrides_get_the_same_did_you_mean(tmp_path):
    with pytest.raises(UsageError, match=r"^overrides\['max_steps'\]: unknown key max_steps \(did you mean "
                                         r"train\.max_steps\?\)"):
        load_recipe(write_recipe(tmp_path / "r.yaml"), {"max_steps": 10})
    assert load_recipe(write_recipe(tmp_path / "r.yaml"), {"train.max_steps": 10, "lora": {"r": 4}}).lora.r == 4


@pytest.mark.parametrize("command", [("validate",), ("data", "check"), ("plan",), ("bench",), ("train",)])
def test_every_recipe_command_says_did_you_mean(tmp_path, capsys, command):
    r = run_cli_here(capsys, *command, str(write_recipe(tmp_path / "r.yaml")), "--set", "max_steps=10")
    assert r.returncode == 2
    assert "did you mean train.max_steps?" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


# --- schema --table -----------------------------------------------------------------------------------------------

def test_schema_table_has_every_recipe_field_once(capsys):
    r = run_cli_here(capsys, "schema", "--table")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[:2] == ["| key | type | default | description |", "|---|---|---|---|"]
    keys = [line.split(" | ")[0].removeprefix("| ").strip("`") for line in lines[2:]]
    expected = [f"{s}.{n}" for s, info in Recipe.model_fields.items() for n in info.annotation.model_fields]
    assert keys == expected  # each once, sections in recipe order
    assert "| `model.name` | str | required | Base model: a local directory" in r.stdout
    assert "| `train.max_steps` | int \\| null | `null` | Stop after this many optimizer steps. |" in lines
    assert "| `train.device` | auto \\| cpu \\| cuda | `auto` | auto: cuda when a GPU is visible, else cpu. |" in lines
    assert "| `train.batch_size` | auto \\| int | `auto` | Rows per device step. auto: 2 on GPU, 4 on CPU. |" \
        in lines
    assert "| `merge.verify` | bool | `true` | Check the merged model against the trained adapter " \
        "(merge_report.json; it loads both models). |" in lines
    assert any(line.startswith("| `export.quant` | list[f32 \\| f16 \\| ") and " | `[q4_k_m, q8_0]` | " in line
               for line in lines)


def test_schema_table_for_one_stage(capsys):
    r = run_cli_here(capsys, "schema", "--stage", "plan", "--table")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0] == "| option | flag | type | default | description |"
    assert [line.split(" | ")[0].removeprefix("| ").strip("`") for line in lines[2:]] == \
        list(STAGE_OPTIONS["plan"][0].model_fields)
    assert lines[3].startswith("| `device` | `--device` | auto \\| cpu \\| cuda | `auto` | auto: this machine's GPU")
    assert lines[4].startswith("| `gpu` | `--gpu` | str \\| null | `null` | Plan for a GPU by name: rtx4090, ")
    merge = run_cli_here(capsys, "schema", "--stage", "merge", "--table").stdout
    assert "| `verify` | `--no-verify` | bool | `true` | " in merge
