"""A request's recipe -> a validated Recipe whose paths are confined to the root: the same checks as
`qlora-kit validate` (schema, then the paths and names it points at), after the server's own refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from qlora_kit.errors import RecipeError, UsageError
from qlora_kit.server.security import MAX_RECIPE_BYTES, Confiner, Refused, confine_recipe


class RecipeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: dict[str, Any] | str = Field(description="The recipe as a JSON object, or the path of a YAML recipe "
                                                     "under the server root.")
    overrides: dict[str, Any] | list[str] | None = Field(
        None, description='Dotted keys ({"train.max_steps": 20}) or the CLI\'s "KEY=VALUE" strings.')


def prepare(request: RecipeRequest, confiner: Confiner, allow_remote_code: bool):
    """-> (Recipe, whether the client named output.name). Raises Refused, RecipeError or UsageError."""
    from qlora_kit.recipe import load_recipe
    from qlora_kit.recipe.checks import check_paths
    from qlora_kit.recipe.load import _apply_override, _read_yaml, _set_dotted

    label = "recipe"
    if isinstance(request.recipe, str):
        path = confiner.path(request.recipe, "recipe")
        if path.is_file() and path.stat().st_size > MAX_RECIPE_BYTES:
            raise Refused(f"recipe: {request.recipe}: larger than {MAX_RECIPE_BYTES // 1024} KiB", status=413)
        label, raw = request.recipe, _read_yaml(path)
    else:
        raw = dict(request.recipe)
    if isinstance(request.overrides, dict):
        for key, value in request.overrides.items():
            _set_dotted(raw, str(key), value, f"overrides[{key!r}]")
    else:
        for item in request.overrides or []:
            _apply_override(raw, item)
    named = isinstance(raw.get("output"), dict) and raw["output"].get("name") is not None
    raw = confine_recipe(raw, confiner, allow_remote_code)
    try:
        recipe = load_recipe(raw)
    except RecipeError as exc:
        raise RecipeError(label, exc.problems) from None
    check_paths(recipe, label)
    return recipe, named


def problems_of(exc: UsageError) -> list[str]:
    return list(exc.problems) if isinstance(exc, RecipeError) else [str(exc)]


def write_temp_recipe(recipe, directory: Path) -> Path:
    from qlora_kit.recipe import dump_recipe

    path = Path(directory) / f"{recipe.output.name}.yaml"
    path.write_text(dump_recipe(recipe), encoding="utf-8")
    return path
