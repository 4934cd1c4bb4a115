"""A stage's flags, generated from its options model (qlora_kit/recipe/options.py), and back.

Nothing about an option is written here: its flag comes from the field's name, argparse's type and metavar from its
annotation (choices are shown; the model checks them, so a bad one is worded like any bad value), the help from its
description and default. Only the flags given on the command line reach the model, so defaults live in one place
(the model, or the recipe section a command starts from). Stage commands also take `--set SECTION.FIELD=VALUE`.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from qlora_kit.recipe.options import StageOptions, flag


def add_option_flags(parser: argparse.ArgumentParser, model: type[StageOptions], section: str | None = None) -> None:
    """One flag per field of `model`. `section`: the recipe section the command starts from (bench), whose value
    is the default where the recipe sets it (`default: the recipe's bench.steps, else 10`)."""
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
                text += f" (default: the recipe's {section}.{name}, else {shown})" if section else \
                    f" (default: {shown})"
        group.add_argument(flag(name, default), help=text.replace("%", "%%"), **kwargs)


def given_options(args: argparse.Namespace, model: type[StageOptions]) -> dict[str, Any]:
    """The options the command line gave (absent flags are absent here, not defaults)."""
    return {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}


def add_set_arg(parser: argparse.ArgumentParser, section: str, example: str) -> None:
    """`--set SECTION.FIELD=VALUE` on a stage command (merge, export, eval): an option by its recipe key, as
    `train --set` takes any recipe field. The value is read as YAML."""
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help=f"set an option by its recipe key, the value read as YAML, e.g. --set "
                             f"{section}.{example}; the same as the option's flag, which may not be given too "
                             "(repeatable; default: none)")


def stage_options(args: argparse.Namespace, model: type[StageOptions], section: str, base=None) -> StageOptions:
    """The stage's options from its flags and its `--set SECTION.FIELD=VALUE` items (over `base`, a recipe section,
    where the stage starts from one), validated by the model (a bad value is worded as the user gave it:
    `--samples: ...` or `--set merge.samples: ...`)."""
    from qlora_kit.recipe.options import make_options

    given = given_options(args, model)
    sets = set_options(getattr(args, "sets", []), model, section)
    for name, (item, _value) in sets.items():
        if name in given:
            from qlora_kit.errors import UsageError

            raise UsageError(f"--set {item!r} and {flag(name, model.model_fields[name].default)} give the same "
                             "option; give one of them")
    given.update({name: value for name, (_item, value) in sets.items()})
    return make_options(model, given, base, spelled={name: f"--set {section}.{name}" for name in sets})


def set_options(items: list[str], model: type[StageOptions], section: str) -> dict[str, tuple[str, Any]]:
    """field -> (the --set item, its value) for `--set SECTION.FIELD=VALUE` items; the last of one field wins.
    A key outside the section is refused naming the allowed keys, with a did-you-mean."""
    from qlora_kit.errors import UsageError
    from qlora_kit.recipe.load import parse_override, suggest_key

    allowed = [f"{section}.{name}" for name in model.model_fields]
    found: dict[str, tuple[str, Any]] = {}
    for item in items:
        key, value = parse_override(item)
        if key not in allowed:
            raise UsageError(f"--set {item!r}: {key} is not a {section} option{suggest_key(key, allowed)}; allowed: "
                             f"{', '.join(allowed)}")
        found[key.split(".", 1)[1]] = (item, value)
    return found


def _plain(annotation: Any) -> Any:
    """`int | None` -> int; a list or Literal stays as it is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _plain(args[0])
    if typing.get_origin(annotation) is typing.Annotated:
        return _plain(args[0])
    return annotation


def _typed(annotation: Any) -> dict[str, Any]:
    plain = _plain(annotation)
    if plain in (int, float):
        return {"type": plain}
    # str, a choice, a list (comma-separated) or a registry name: the model validates it, so a bad value is one
    # line in the project's words (`--device t4: auto, cpu or cuda; for a GPU by name use --gpu t4`), as from the API
    return {}


def _metavar(name: str, annotation: Any) -> str | None:
    plain = _plain(annotation)
    if typing.get_origin(plain) is Literal:  # shown as argparse shows choices; the model checks the value
        return "{" + ",".join(map(str, typing.get_args(plain))) + "}"
    if typing.get_origin(plain) is list:
        return "A,B,..."
    return {int: "N", float: "X"}.get(plain, name.upper().replace("_", "-").split("-")[-1])
