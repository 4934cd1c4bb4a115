"""Every command in README.md runs, so the README cannot drift from the code (issue #31).

The README's blocks are marked (see tests/readme_commands.py): blocks marked `tiny` and `run` are executed in order
in one scratch directory, as a newcomer would type them, with the tiny built-in model standing in for the real one
a recipe names; `make` targets are checked to exist; skipped blocks print why. The newcomer path ends with the
Ollama Modelfile: its FROM file must exist and answer a prompt through llama.cpp (`qlora-kit chat`).
Every `qlora-kit` command in README.md and docs/*.md is also parsed by the real argument parser (fast), so a
renamed flag fails here even in a block that is not run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from readme_commands import (Block, blocks, cli_commands, fields_page, heading_slugs, inline_cli_mentions,
                             make_targets, modelfile_from, tiny_recipe)

README = ROOT / "README.md"
TEXT = README.read_text()
BLOCKS = [b for b in blocks(TEXT) if b.lang in ("bash", "sh", "shell")]
DOCS = sorted((ROOT / "docs").glob("*.md"))
RUN_TIMEOUT = 600


def test_readme_stays_a_path_not_a_manual():
    assert len(TEXT.splitlines()) < 300, "move reference material to docs/"
    headings = [line for line in TEXT.splitlines() if line.startswith("## ")]
    order = ["## Quickstart", "## Your data to Ollama in five commands", "## On CPU only"]
    assert [h for h in headings if h in order] == order, headings


def test_every_bash_block_says_how_it_is_tested():
    unmarked = [b.label for b in BLOCKS if b.mode is None]
    assert not unmarked, f"add a <!-- test: run|tiny|make-target|skip (reason) --> line before: {unmarked}"
    assert all(b.reason for b in BLOCKS if b.mode == "skip"), "a skipped block must say why"


def test_make_blocks_name_targets_that_exist():
    targets = make_targets((ROOT / "Makefile").read_text())
    for block in (b for b in BLOCKS if b.mode == "make-target"):
        for command in block.commands:
            words = command.split("#")[0].split()
            assert words[0] == "make" and len(words) == 2, f"{block.label}: one `make TARGET` per line"
            assert words[1] in targets, f"{block.label}: no `{words[1]}` target in the Makefile"


def test_json_example_is_a_row_data_check_accepts():
    from qlora_kit.data.formats import detect_format

    rows = [json.loads(b.code) for b in blocks(TEXT) if b.lang == "json"]
    assert rows
    for row in rows:
        fmt = detect_format(row, "README.md")
        assert fmt.name == "openai" and fmt.convert(row).messages


def _parse(argv: list[str]) -> str | None:
    """None when the real parser accepts argv, else its error message."""
    from qlora_kit.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            return err.getvalue().strip().splitlines()[-1] if exc.code else None
    return None


def _flags_of(argv: list[str]) -> tuple[set[str], list[str]]:
    """(the flags the (sub)command named by argv accepts, the flags argv uses)."""
    from qlora_kit.cli import build_parser

    parser, words = build_parser(), list(argv)
    while words and parser._subparsers is not None:
        choices = parser._subparsers._group_actions[0].choices
        if words[0] not in choices:
            break
        parser = choices[words.pop(0)]
    used = [w.split("=")[0] for w in words if w.startswith("--")]
    return set(parser._option_string_actions), used


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_every_qlora_kit_command_parses(doc):
    text = doc.read_text()
    bad = [f"{where}: {error}" for argv, where in cli_commands(text) if (error := _parse(argv))]
    # Flags as spelled out: argparse would also take an abbreviation (--gpu for --gpu-mem), which drifts.
    for argv, span in [*cli_commands(text), *inline_cli_mentions(text)]:
        known, used = _flags_of(argv)
        bad += [f"`{span}`: {flag} is not a flag of this command" for flag in used if flag not in known]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_links_point_at_files_and_headings_that_exist(doc):
    import re

    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            bad.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in heading_slugs(file.read_text()):
            bad.append(f"{target}: no heading #{anchor}")
    assert not bad, bad


def test_recipe_fields_page_is_what_schema_table_prints(capsys):
    from qlora_kit.cli import main

    capsys.readouterr()
    assert main(["schema", "--table"]) == 0
    expected = fields_page(capsys.readouterr().out)
    assert (ROOT / "docs" / "recipe-fields.md").read_text() == expected, \
        "docs/recipe-fields.md is out of date: python tests/readme_commands.py fields"


def test_real_model_recipes_end_in_a_gguf_and_a_modelfile():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        if recipe["model"]["name"].startswith(("builtin:", "pkg:")):
            continue  # the offline demos, which already do (and measure their CPU time in benchmarks/RESULTS.md)
        assert recipe.get("merge", {}).get("enabled") and recipe.get("export", {}).get("enabled"), path.name
        assert "q4_k_m" in recipe["export"].get("quant", ["q4_k_m"]), path.name
        header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        assert "rtx4090" in header and "GiB" in header, f"{path.name}: say its memory on a 24 GB GPU (qlora-kit plan)"


# ---- the README's commands, run in order in one scratch directory -------------------------------------------------

RUNNABLE = [b for b in BLOCKS if b.mode in ("run", "tiny", "skip")]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A directory laid out like a checkout: recipes/ (tiny stand-ins), .venv/bin/qlora-kit (this interpreter's
    CLI) and the user's my_chats.jsonl (the shipped demo chats, the README's example row first)."""
    home = tmp_path_factory.mktemp("readme")
    (home / "recipes").mkdir()
    for shipped in (ROOT / "recipes").glob("*.yaml"):
        (home / "recipes" / shipped.name).write_text(yaml.safe_dump(tiny_recipe(shipped), sort_keys=False))
    bin_dir = home / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    shim = bin_dir / "qlora-kit"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m qlora_kit "$@"\n')
    shim.chmod(0o755)
    example = next(b.code for b in blocks(TEXT) if b.lang == "json").strip()
    shipped_rows = (ROOT / "qlora_kit" / "assets" / "tiny_demo.jsonl").read_text()
    (home / "my_chats.jsonl").write_text(example + "\n" + shipped_rows)
    return home


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          env=env)


def _check_modelfile(sandbox: Path) -> str:
    """What stands in for `ollama create`: every Modelfile's FROM file exists and answers through llama.cpp."""
    modelfiles = sorted(sandbox.glob("runs/*/gguf/Modelfile"))
    assert modelfiles, "the path wrote no Modelfile"
    answers = []
    for modelfile in modelfiles:
        gguf = modelfile_from(modelfile)
        assert gguf.is_file(), f"{modelfile}: FROM {gguf.name} does not exist"
        done = _run(f".venv/bin/qlora-kit chat {gguf} --prompt 'Is this review positive or negative? The trip to "
                    f"Lima was fun.' --max-new-tokens 8", sandbox)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip(), f"{gguf.name} gave an empty answer"
        answers.append(f"{gguf.relative_to(sandbox)} answered {done.stdout.strip()!r}")
    return "; ".join(answers)


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.label for b in RUNNABLE])
def test_readme_block(block: Block, sandbox: Path):
    if block.mode == "skip":
        checked = _check_modelfile(sandbox) if "ollama" in block.code else "nothing"
        pytest.skip(f"README {block.label}: not run ({block.reason}); checked instead: {checked}")
    for command in block.commands:
        done = _run(command, sandbox)
        assert done.returncode == 0, f"README line {block.line}: `{command}` exited {done.returncode}:\n" \
                                     f"{done.stderr[-3000:]}"
    words = block.commands[0].split()
    if words[1:2] == ["train"]:  # merge and export are on in every recipe the README trains
        run_dir = sandbox / "runs" / Path(words[2]).stem
        assert (run_dir / "merged" / "config.json").is_file()
        assert modelfile_from(run_dir / "gguf" / "Modelfile").is_file()
    if words[1:2] == ["eval"]:
        report = json.loads((sandbox / words[2] / "eval" / "report.json").read_text())
        assert report["verdict"]["text"]


def test_newcomer_path_is_in_the_readme_in_order():
    """The path the issue asks for: install, data check, train (merge + export on), eval, `ollama create`."""
    kinds = []
    for block in BLOCKS:
        for command in block.commands:
            words = command.replace(".venv/bin/", "").split()
            kinds.append(" ".join(words[:2]) if words[0] in ("make", "ollama") else " ".join(words[:3 if
                         words[1] == "data" else 2]))
    path = ["make install", "qlora-kit data check", "qlora-kit train", "qlora-kit eval", "ollama create"]
    positions = [kinds.index(step) for step in path]
    assert positions == sorted(positions), kinds
