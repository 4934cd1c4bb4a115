"""Shared test helpers.

Integration tests run the real CLI in a subprocess: `import unsloth` patches transformers globally, so it must
never happen inside the pytest process (unit tests here use plain transformers tokenizers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# One cache for the whole session, so builtin:tiny-llama is built once; inherited by CLI subprocesses.
os.environ.setdefault("QLORA_KIT_HOME", tempfile.mkdtemp(prefix="qlora-kit-test-home-"))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qlora_kit", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})


def run_cli_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """`run_cli` in this process: the same exit code and output lines for commands that fail or finish quickly,
    without paying a new interpreter's imports (~3 s) per call. Subprocess tests keep the real process contract."""
    from qlora_kit.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


def pinned_versions() -> dict[str, str]:
    """name -> version, as requirements/constraints.txt pins them (what `make install` installs)."""
    lines = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def write_recipe(path: Path, **sections) -> Path:
    """A tiny-model recipe; keyword arguments replace or extend its sections."""
    recipe = {
        "model": {"name": "builtin:tiny-llama", "max_seq_length": 128},
        "data": {"path": "builtin:tiny-chat", "chat_template": "chatml"},
        "lora": {"r": 16, "alpha": 32},
        "train": {"max_steps": 30, "lr": 3e-3, "batch_size": 8, "logging_steps": 1, "save_steps": 1000},
        "output": {"dir": str(path.parent / "runs")},
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_events(run_dir: Path, kind: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if kind is None or r["event"] == kind]


def step_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss; a resumed run's later lines win."""
    return {e["step"]: e["loss"] for e in read_events(run_dir, "step")}


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from qlora_kit.model.builtin import materialize

    return materialize("builtin:tiny-llama")


@pytest.fixture()
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


RESUME_RECIPE = {"train": {"max_steps": 24, "logging_steps": 1, "save_steps": 1000, "lr": 3e-3},
                 "lora": {"dropout": 0.1}}  # dropout: resume must restore the RNG state too


@pytest.fixture(scope="session")
def straight_losses(tmp_path_factory) -> dict[int, float]:
    """step -> loss of one uninterrupted run of RESUME_RECIPE: what every cancel-then-resume run must reproduce."""
    tmp = tmp_path_factory.mktemp("straight")
    recipe = write_recipe(tmp / "straight.yaml", **RESUME_RECIPE)
    result = run_cli("train", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    return step_losses(tmp / "runs" / "straight")


def assert_same_losses(run_dir: Path, reference: dict[int, float]) -> None:
    losses = step_losses(run_dir)
    assert sorted(losses) == sorted(reference) == list(range(1, len(reference) + 1))
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-6), step  # float noise only


def assert_seq_without_gaps(run_dir: Path) -> list[dict]:
    events = read_events(run_dir)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len({e["run_id"] for e in events}) == 1 and events[0]["run_id"]
    return events


def plugin_env(*dirs: str, **extra: str) -> dict:
    """The environment of a CLI subprocess in which the test plugin packages in tests/<dir> are installed."""
    paths = [str(ROOT / "tests" / d) for d in dirs]
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1",
            "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep), **extra}
