"""Checks on what a valid recipe points at (files, directories, registry names), without loading anything heavy.

Run by `validate` and at the start of `train`, so a wrong path fails in a second rather than after a model load.
All problems are reported together, like schema problems.
"""

from __future__ import annotations

import os
from pathlib import Path

from qlora_kit.errors import QKError, RecipeError
from qlora_kit.recipe.schema import Recipe


def check_paths(recipe: Recipe, source: str) -> None:
    from qlora_kit.data.sources import check_source
    from qlora_kit.data.templates import CHAT_TEMPLATES
    from qlora_kit.model.resolve import check_model_name

    problems: list[str] = []
    for fn, args in ((check_model_name, (recipe.model.name,)),
                     (check_source, (recipe.data.path, "data.path"))):
        try:
            fn(*args)
        except QKError as exc:
            problems.append(str(exc))
    if recipe.data.eval_path:
        try:
            check_source(recipe.data.eval_path, "data.eval_path")
        except QKError as exc:
            problems.append(str(exc))
    if recipe.data.chat_template != "auto" and recipe.data.chat_template not in CHAT_TEMPLATES:
        problems.append(f"data.chat_template: {recipe.data.chat_template!r} is not a built-in template; choose auto "
                        f"(the tokenizer's) or one of: {', '.join(CHAT_TEMPLATES)}")
    out_problem = _writable_dir_problem(Path(recipe.output.dir))
    if out_problem:
        problems.append(f"output.dir: {recipe.output.dir}: {out_problem}")
    if problems:
        raise RecipeError(source, problems)


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
