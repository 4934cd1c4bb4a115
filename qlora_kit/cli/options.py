"""A stage's flags, generated from its options model (qlora_kit/recipe/options.py), and back.

Nothing about an option is written here: its flag comes from the field's name, argparse's type and choices from its
annotation, the help from its description and default. Only the flags given on the command line reach the model,
so defaults live in one place (the model, or the recipe section a command starts from).
"""

from __future__ import annotations

import argparse
import typing
from typing import Any, Literal

from qlora_kit.recipe.options import StageOptions, flag


def add_option_flags(parser: argparse.ArgumentParser, model: type[StageOptions], defaults_note: str = "") -> None:
    """One flag per field of `model`. `defaults_note`: where a field's default comes from when the command starts
    from a recipe section (bench), instead of the model's own default."""
    group = parser.add_argument_group("stage options", "the same fields as the recipe section and the API's keyword "
                                      "arguments (qlora-kit schema --stage NAME)")
    for name, info in model.model_fields.items():
        annotation, default = info.annotation, info.default
        text = (info.description or "").rstrip(".")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if _plain(annotation) is bool:
            kwargs.update(action="store_false" if default is True else "store_true")
            text = f"turn off: {text[:1].lower()}{text[1:]}" if default is True else text
        else:
            kwargs.update(metavar=_metavar(name, annotation), **_typed(annotation))
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            if shown is not None:
                text += f" (default: {defaults_note or shown})"
        group.add_argument(flag(name, default), help=text.replace("%", "%%"), **kwargs)


def given_options(args: argparse.Namespace, model: type[StageOptions]) -> dict[str, Any]:
    """The options the command line gave (absent flags are absent here, not defaults)."""
    return {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}


def _plain(annotation: Any) -> Any:
    """`int | None` -> int; a list or Literal stays as it is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)) \
            and len(args) == 1:
        return _plain(args[0])
    if typing.get_origin(annotation) is typing.Annotated:
        return _plain(args[0])
    return annotation


def _typed(annotation: Any) -> dict[str, Any]:
    plain = _plain(annotation)
    if typing.get_origin(plain) is Literal:
        return {"choices": typing.get_args(plain)}
    if plain in (int, float):
        return {"type": plain}
    return {}  # str, a list (comma-separated) or a registry name: the model validates it


def _metavar(name: str, annotation: Any) -> str | None:
    plain = _plain(annotation)
    if typing.get_origin(plain) is Literal:
        return None
    if typing.get_origin(plain) is list:
        return "A,B,..."
    return {int: "N", float: "X"}.get(plain, name.upper().replace("_", "-").split("-")[-1])
