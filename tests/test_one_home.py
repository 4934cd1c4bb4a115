"""Each piece of shared logic has one home (issue: duplication found in review), and every declared dependency is
used. These read the source, so a copy pasted back in fails here before it drifts from the original."""

from __future__ import annotations

import ast
import re

import pytest

from conftest import ROOT, pinned_versions

PACKAGE = ROOT / "qlora_kit"


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py")}


def _defined(name: str) -> list[str]:
    """Modules that define a function or class called `name` (at any depth) or assign it at module level."""
    out = []
    for path, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                out.append(path)
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                out.append(path)
    return out


def _sources_matching(pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if regex.search(p.read_text()))


def test_first_line_of_an_exception_has_one_home():
    assert _defined("_first_line") == [] and _defined("first_line") == ["qlora_kit/errors.py"]
    assert _sources_matching(r"splitlines\(\) or \[") == ["qlora_kit/errors.py"]


def test_one_logit_comparison_serves_merge_and_export():
    assert _sources_matching(r"log_softmax") == ["qlora_kit/logits.py"]
    assert _defined("compare_logits") == ["qlora_kit/logits.py"]


def test_held_out_rows_live_beside_the_data_not_in_the_merge():
    assert _defined("held_out_rows") == ["qlora_kit/data/held_out.py"]
    assert _defined("FALLBACK_TEXTS") == ["qlora_kit/data/held_out.py"]


def test_runtime_is_defined_where_it_is_built():
    assert _defined("Runtime") == ["qlora_kit/train/auto.py"]
    assert _sources_matching(r"\bRuntime\(") == ["qlora_kit/train/auto.py"]


def test_fully_trained_modules_and_the_dtype_rule_are_written_once():
    assert _defined("FULLY_TRAINED") == ["qlora_kit/model/backends.py"]
    assert _sources_matching(r'"bfloat16" if') == ["qlora_kit/train/auto.py"]


# Declared, never imported by qlora-kit, and still needed: the libraries we call load them.
NEEDED_BY_LIBRARIES = {
    "accelerate": "transformers' Trainer refuses to start without it",
    "sentencepiece": "the tokenizers of Llama-2/Gemma/Mistral-family checkpoints without tokenizer.json",
    "python-multipart": "Starlette parses the server's multipart uploads (POST /v1/files) with it",
}
IMPORT_NAMES = {"pyyaml": "yaml", "llama-cpp-python": "llama_cpp"}


def test_every_declared_dependency_is_used():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower() for d in deps]
    unused = [n for n in names if n not in NEEDED_BY_LIBRARIES
              and not _sources_matching(rf"(?m)^\s*(import|from) {IMPORT_NAMES.get(n, n).replace('-', '_')}\b")]
    assert unused == []


# Optional metric loggers (`train.report_to`, off by default): the suite neither installs nor runs them, so there is
# no tested version to pin them to; their ranges stay as their extras declare them.
UNTESTED_EXTRAS = {"tensorboard", "wandb", "mlflow"}


def _declared() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [d for name, extra in project["optional-dependencies"].items()
                                      if name not in UNTESTED_EXTRAS for d in extra]


def test_every_dependency_is_pinned_to_the_version_the_suite_runs_with():
    # A range admits versions nobody ran the suite with: transformers 4.57.6 was allowed, and there a float
    # warmup_steps is not a ratio (warmup silently lost). pyproject and the Makefile's constraints must agree.
    pins = pinned_versions()
    for dep in _declared():
        name, _, spec = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?(.*)", dep.split(";")[0]).groups()
        assert spec.strip() == f"=={pins.get(name.lower().replace('_', '-'), pins.get(name))}", dep
