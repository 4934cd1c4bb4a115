"""The names of the systems `eval` compares, and where each one's files are: light (no torch), so `validate`
checks eval.systems without loading anything (recipe/checks.py). How each system runs is eval/systems.py."""

from __future__ import annotations

from pathlib import Path

from qlora_kit.errors import UsageError

KINDS = ("base", "fewshot", "adapter", "reference", "merged", "gguf", "recorded")
WITH_ARGUMENT = ("gguf", "recorded")  # kind:ARGUMENT; the others are bare names


def parse_systems(spec: str | list[str], field: str = "--systems") -> list[str]:
    """Names as given (duplicates dropped); only the names are checked here, not what they point at. `recorded:FILE`
    keeps the path as typed: the report names the system that way. Validate imports this (no numpy, no torch)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    for name in names:
        kind, sep, arg = name.partition(":")
        if kind not in KINDS or (kind in WITH_ARGUMENT) != bool(sep) or (sep and not arg.strip()):
            raise UsageError(f"{field}: unknown system {name!r}; choose from base, fewshot, adapter, reference, merged, "
                             "gguf:TYPE (e.g. gguf:q4_k_m), recorded:FILE (an old model's answers, .jsonl)")
    if not names:
        raise UsageError(f"{field}: name at least one system, e.g. --systems base,fewshot,adapter")
    return list(dict.fromkeys(names))


def gguf_path(run_dir: Path, quant: str) -> Path:
    from qlora_kit.gguf.tensors.quants import get_quant_type

    q = get_quant_type(quant).name
    path = run_dir / "gguf" / f"{run_dir.name}-{q}.gguf"
    if not path.is_file():
        raise UsageError(f"--systems gguf:{q}: {path} does not exist; make it with: qlora-kit export {run_dir} "
                         f"--quant {q}")
    return path


def reference_dir(recipe) -> Path:
    """The starting adapter of a run that continued one (model.adapter): the `reference` system."""
    from qlora_kit.model.start_adapter import adapter_dir

    if not recipe.model.adapter:
        raise UsageError("--systems reference: the run started from no trained adapter (model.adapter is unset), so "
                         "the model it was measured against is the base; name base instead")
    return adapter_dir(recipe.model.adapter)


def merged_dir(run_dir: Path) -> Path:
    path = run_dir / "merged"
    if not (path / "config.json").is_file():
        raise UsageError(f"--systems merged: {path} does not exist; make it with: qlora-kit merge {run_dir}")
    return path


def system_problems(names: list[str], field: str = "eval.systems") -> list[str]:
    """What `validate` can tell about eval.systems before the run exists, one line each: unknown names, and
    recorded:FILE files that are missing or malformed (read now: a bad line fails in a second, not after training)."""
    from qlora_kit.errors import QKError
    from qlora_kit.eval.recorded import load_recorded

    try:
        names = parse_systems(names, field)
    except UsageError as exc:
        return [str(exc)]
    problems = []
    for name in (n for n in names if n.startswith("recorded:")):
        try:
            load_recorded(name.split(":", 1)[1], field)
        except QKError as exc:
            problems.append(str(exc) if str(exc).startswith(field) else f"{field} {name}: {exc}")
    return problems


def template_name(adapter_dir: Path) -> str:
    """The chat template training used (the adapter's qlora_kit.json): a built-in's name, else "tokenizer"."""
    import json

    try:
        return json.loads((adapter_dir / "qlora_kit.json").read_text())["chat_template"]
    except (OSError, ValueError, KeyError):
        return "tokenizer"
