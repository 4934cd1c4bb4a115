"""What the package declares is what it uses and what the suite ran with: every dependency in pyproject.toml is
imported somewhere in qlora_kit/ (or is needed by a library we call, said why below), and every one is pinned to
the version requirements/constraints.txt installs (the versions this suite passes with)."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT, pinned_versions

# Declared, never imported by qlora-kit, and still needed: the libraries we call load them.
NEEDED_BY_LIBRARIES = {
    "accelerate": "transformers' Trainer refuses to start without it",
    "sentencepiece": "the tokenizers of Llama-2/Gemma/Mistral-family checkpoints without tokenizer.json",
    "python-multipart": "Starlette parses the server's multipart uploads (POST /v1/files) with it",
}
IMPORT_NAMES = {"pyyaml": "yaml", "llama-cpp-python": "llama_cpp"}
# Optional metric loggers (`train.report_to`, off by default): the suite neither installs nor runs them, so there is
# no tested version to pin them to; their ranges stay as their extras declare them.
UNTESTED_EXTRAS = {"tensorboard", "wandb", "mlflow"}


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imported_anywhere(module: str) -> bool:
    """Whether any source file of the package imports `module` (any file, at any depth: where does not matter)."""
    pattern = re.compile(rf"(?m)^\s*(import|from) {re.escape(module)}\b")
    return any(pattern.search(p.read_text(encoding="utf-8")) for p in (ROOT / "qlora_kit").rglob("*.py"))


def test_every_declared_dependency_is_used():
    names = [re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower() for d in _project()["dependencies"]]
    unused = [n for n in names if n not in NEEDED_BY_LIBRARIES
              and not _imported_anywhere(IMPORT_NAMES.get(n, n).replace("-", "_"))]
    assert unused == [], f"declared in pyproject.toml but imported nowhere in qlora_kit/: {unused}"


def test_every_dependency_is_pinned_to_the_version_the_suite_runs_with():
    # A range admits versions nobody ran the suite with: transformers 4.57.6 was allowed, and there a float
    # warmup_steps is not a ratio (warmup silently lost). pyproject and the Makefile's constraints must agree.
    project = _project()
    declared = project["dependencies"] + [d for name, extra in project["optional-dependencies"].items()
                                          if name not in UNTESTED_EXTRAS for d in extra]
    pins = pinned_versions()
    for dep in declared:
        name, _, spec = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?(.*)", dep.split(";")[0]).groups()
        assert spec.strip() == f"=={pins.get(name.lower().replace('_', '-'), pins.get(name))}", dep
