"""One options model per stage (qlora_kit/recipe/options.py): the command's flags, the API's keywords, the recipe
section and the JSON Schema are that model, field for field (issue #25). Fast: nothing here trains or loads a model."""

from __future__ import annotations

import argparse
import inspect
import json
import typing

import pytest

from conftest import run_cli

import qlora_kit as qk
from qlora_kit.cli import build_parser
from qlora_kit.cli.options import given_options
from qlora_kit.cli.schema import STAGES
from qlora_kit.recipe.options import STAGE_OPTIONS, flag, make_options, to_argv
from qlora_kit.recipe.schema import Recipe

SECTIONS = {"merge": "merge", "export": "export", "eval": "eval", "bench": "bench"}  # plan has no recipe section
# A valid value other than the default, for fields whose type alone does not give one.
SAMPLE = {"max_shard_size": "500MB", "gpu_mem": "24GiB", "device": "cuda", "gpu": "t4", "mem_limit": "8GiB",
          "data": "x.jsonl", "scorer": "mod:fn", "backend": "hf", "systems": ["base", "adapter"],
          "quant": ["q8_0", "f16"], "backends": ["hf"], "seq_lens": [64, 128], "batch_sizes": [1, 2], "methods": ["sft", "dpo"]}


def _subparser(command: str) -> argparse.ArgumentParser:
    actions = build_parser()._subparsers._group_actions[0]
    return actions.choices[command]


def _other_value(model, name: str):
    info = model.model_fields[name]
    if name in SAMPLE and not (model.__name__ == "BenchOptions" and name == "data"):
        return SAMPLE[name]
    plain = [a for a in typing.get_args(info.annotation) if a is not type(None)] or [info.annotation]
    kind = plain[0]
    if kind is bool or info.annotation is bool:
        return not info.default
    if typing.get_origin(kind) is typing.Literal or typing.get_origin(info.annotation) is typing.Literal:
        choices = typing.get_args(kind if typing.get_origin(kind) is typing.Literal else info.annotation)
        return next(c for c in choices if c != info.default)
    if kind is int:
        return (info.default or 1) + 1
    if kind is float:
        return 0.25
    raise AssertionError(f"{model.__name__}.{name}: add a sample value to SAMPLE")


def test_every_stage_has_one_options_model_and_schema_lists_them():
    assert set(STAGE_OPTIONS) == set(STAGES)


@pytest.mark.parametrize("command", sorted(STAGE_OPTIONS))
def test_cli_flags_are_the_options_model(command):
    """Every field is one flag, named after it, with its type, choices (shown; the model checks them), and its
    default in the help."""
    model = STAGE_OPTIONS[command][0]
    parser = _subparser(command)
    by_dest = {a.dest: a for a in parser._actions if a.option_strings}
    for name, info in model.model_fields.items():
        action = by_dest.get(name)
        assert action is not None, f"{command}: no flag for {name}"
        assert action.option_strings == [flag(name, info.default)]
        assert action.default is argparse.SUPPRESS  # the model's default applies, not a second copy in argparse
        if info.annotation is bool:
            assert action.const is (not info.default) and action.nargs == 0
        else:
            choices = [typing.get_args(a) for a in (info.annotation, *typing.get_args(info.annotation))
                       if typing.get_origin(a) is typing.Literal]
            assert action.choices is None  # a bad choice is the model's one-line error, not argparse's usage dump
            if choices:
                assert action.metavar == "{" + ",".join(choices[0]) + "}"
            assert info.description.split(".")[0][:40].replace("%", "%%") in action.help
            if info.default is not None:
                shown = ",".join(map(str, info.default)) if isinstance(info.default, list) else str(info.default)
                assert action.help.endswith(f"(default: the recipe's bench.{name}, else {shown})" if command == "bench"
                                            else f"(default: {shown})")


@pytest.mark.parametrize("command", sorted(STAGE_OPTIONS))
def test_options_survive_the_command_line(command):
    """Non-default values for every field, written as flags (how the API hands a stage to a child process) and
    parsed back by the command's generated parser: the same options."""
    model = STAGE_OPTIONS[command][0]
    options = make_options(model, {name: _other_value(model, name) for name in model.model_fields})
    assert all(getattr(options, n) != i.default for n, i in model.model_fields.items())
    argv = to_argv(options)
    args = build_parser().parse_args([command, "TARGET", *argv])
    assert make_options(model, given_options(args, model)) == options
    assert to_argv(model()) == []  # defaults are not written


@pytest.mark.parametrize("command", sorted(STAGE_OPTIONS))
def test_api_keywords_are_the_options_model(command):
    """qk.<stage>(..., options=Model | **fields): the docstring names every field, an unknown keyword is refused
    naming the options, and a bad value is worded with the field's name."""
    model, api_name = STAGE_OPTIONS[command]
    fn = getattr(qk, api_name)
    params = inspect.signature(fn).parameters
    assert params["options"].annotation in (f"{model.__name__} | None", typing.Optional[model])
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    doc = " ".join(fn.__doc__.split())
    assert f"({', '.join(model.model_fields)})" in doc
    with pytest.raises(qk.UsageError) as err:
        fn("nowhere", no_such_option=1)
    assert str(err.value) == f"qk.{api_name}: no_such_option: not an option (options: {', '.join(model.model_fields)})"


@pytest.mark.parametrize("command", sorted(SECTIONS))
def test_recipe_section_is_the_options_model(command):
    """The recipe's section is the options plus `enabled`; its JSON Schema (qlora-kit schema) has the same
    fields, types and defaults as the stage's (qlora-kit schema --stage)."""
    model = STAGE_OPTIONS[command][0]
    recipe = Recipe.model_json_schema()
    section = recipe["$defs"][recipe["properties"][SECTIONS[command]]["$ref"].split("/")[-1]]
    stage = model.model_json_schema()
    assert set(section["properties"]) - set(stage["properties"]) <= {"enabled"}
    for name, prop in stage["properties"].items():
        assert section["properties"][name] == prop, name


def test_schema_command_prints_a_stage():
    result = run_cli("schema", "--stage", "merge")
    assert result.returncode == 0
    assert json.loads(result.stdout) == STAGE_OPTIONS["merge"][0].model_json_schema()


def test_a_bad_value_is_worded_for_the_caller():
    merge = STAGE_OPTIONS["merge"][0]
    with pytest.raises(qk.UsageError, match=r"^--samples: 0 must be at least 1$"):
        make_options(merge, {"samples": 0})
    with pytest.raises(qk.UsageError, match=r"^qk.merge: samples: 0 must be at least 1$"):
        qk.merge("nowhere", samples=0)
    with pytest.raises(qk.UsageError, match=r"^--max-shard-size: 'lots' is not a size"):
        make_options(merge, {"max_shard_size": "lots"})
