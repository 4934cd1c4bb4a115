"""Checks on what a valid recipe points at (files, directories, registry names), without loading anything heavy.

Run by `validate` and at the start of `train`, so a wrong path fails in a second rather than after a model load.
All problems are reported together, like schema problems.
"""

from __future__ import annotations

import os
from pathlib import Path

from qlora_kit.errors import QKError, RecipeError
from qlora_kit.recipe.schema import Recipe
from qlora_kit.recipe.registry import did_you_mean


def check_paths(recipe: Recipe, source: str) -> None:
    problems = reference_problems(recipe.model_dump(mode="json"))
    if problems:
        raise RecipeError(source, problems)


def reference_problems(raw: dict, skip: frozenset[str] = frozenset()) -> list[str]:
    """What is wrong with the names a recipe gives (model, data files, chat template, eval systems, output dir), one
    line each.

    `raw` may be a recipe the schema refused: `load_recipe` adds these lines to the schema's, so one pass shows
    every problem. Fields in `skip` (the schema already refused them) and values that are not strings are left out.
    """
    from qlora_kit.data.sources import check_source
    from qlora_kit.data.templates import CHAT_TEMPLATES
    from qlora_kit.model.resolve import check_model_name
    from qlora_kit.model.start_adapter import adapter_dir

    def value(key: str) -> str | None:
        section, name = key.split(".")
        v = raw.get(section, {}).get(name) if isinstance(raw.get(section), dict) else None
        return v if isinstance(v, str) and key not in skip else None

    problems: list[str] = []
    checks = {"model.name": check_model_name, "data.path": lambda v: check_source(v, "data.path"),
              "data.eval_path": lambda v: check_source(v, "data.eval_path"), "model.adapter": adapter_dir}
    for key, check in checks.items():
        if value(key) is None:
            continue
        try:
            check(value(key))
        except QKError as exc:
            problems.append(str(exc))
    template = value("data.chat_template")
    if template is not None and template != "auto" and template not in CHAT_TEMPLATES:
        problems.append(f"data.chat_template: {template!r} is not a built-in template; choose auto (the tokenizer's) "
                        f"or one of: {', '.join(CHAT_TEMPLATES)}{did_you_mean(template, CHAT_TEMPLATES)}")
    systems = raw.get("eval", {}).get("systems") if isinstance(raw.get("eval"), dict) else None
    if isinstance(systems, list) and all(isinstance(s, str) for s in systems) and "eval.systems" not in skip:
        from qlora_kit.eval.names import system_problems

        problems += system_problems(systems)
    problems += _grader_problems(raw, skip)
    out_dir = value("output.dir")
    out_problem = _writable_dir_problem(Path(out_dir)) if out_dir is not None else None
    if out_problem:
        problems.append(f"output.dir: {out_dir}: {out_problem}")
    return problems


def _grader_problems(raw: dict, skip: frozenset[str]) -> list[str]:
    """grpo.graders as `train` will load them (files found, functions importable, formulas parsed): one line."""
    grpo = raw.get("grpo") if isinstance(raw.get("grpo"), dict) else {}
    specs = grpo.get("graders")
    if not isinstance(specs, list) or not specs or "grpo.graders" in skip or not all(isinstance(s, dict) for s in specs):
        return []
    from qlora_kit.graders import load_graders

    try:
        load_graders(specs, Path.cwd()).close()
    except QKError as exc:
        return [str(exc)]
    return []


def _writable_dir_problem(path: Path) -> str | None:
    """None when `path` exists as a writable dir or could be created; otherwise why not."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable; choose another output.dir"
    return None
