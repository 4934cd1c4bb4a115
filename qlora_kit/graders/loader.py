"""load_graders: a list of grader specs -> Graders (score a batch, or hand TRL its reward functions).

Names: a spec's `name`, else its type (a function grader: its function's name), made unique with _2, _3, ... in
spec order; two specs that give the same `name` are refused. Every spec problem is one UsageError line that
starts with the spec's location (`grpo.graders[1] (text_similarity 'close'): ...`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from qlora_kit.errors import UsageError
from qlora_kit.graders.base import Batch, Grader
from qlora_kit.graders.formats import JsonSchema, Tags
from qlora_kit.graders.formula import Multi
from qlora_kit.graders.function import FunctionGrader, default_name
from qlora_kit.graders.python import PythonGrader
from qlora_kit.graders.rewards import BatchCache, check_lengths, completion_text
from qlora_kit.graders.spec import Spec, did_you_mean
from qlora_kit.graders.text import StringCheck, TextSimilarity

_CLASSES: dict[str, type[Grader]] = {cls.type: cls for cls in (
    StringCheck, TextSimilarity, PythonGrader, Multi, Tags, JsonSchema, FunctionGrader)}
GRADER_TYPES: tuple[str, ...] = tuple(_CLASSES)
_JUDGE = ("needs a judge model, which qlora-kit does not run; grade with a python grader (your own scoring code) "
          "or text_similarity")
REFUSED_TYPES = {"score_model": _JUDGE, "label_model": _JUDGE}


def build_grader(raw: Any, location: str, name: str, base_dir: Path) -> Grader:
    """One grader from its spec (multi's sub-graders come back here through Spec.build)."""
    if not isinstance(raw, dict):
        raise UsageError(f"{location}: expected a mapping with a 'type', got {type(raw).__name__}")
    kind = raw.get("type")
    if kind in REFUSED_TYPES:
        raise UsageError(f"{location} ({kind} {name!r}): {kind} {REFUSED_TYPES[kind]}")
    if kind not in _CLASSES:
        problem = "missing field 'type'" if kind is None else f"unknown type {kind!r}{did_you_mean(kind, _CLASSES)}"
        raise UsageError(f"{location}: {problem}; known types: {', '.join(GRADER_TYPES)}")
    spec = Spec(raw, location, name, base_dir,
                build=lambda sub, sub_location, sub_name: build_grader(sub, sub_location, sub_name, base_dir))
    return _CLASSES[kind](spec)


def grader_names(specs: list, where: str) -> list[str]:
    taken: dict[str, int] = {}
    for i, raw in enumerate(specs):
        if isinstance(raw, dict) and "name" in raw:
            name = raw["name"]
            if not isinstance(name, str) or not name.strip():
                raise UsageError(f"{where}[{i}]: field 'name' must be a non-empty string, got {name!r}")
            if name in taken:
                raise UsageError(f"{where}[{i}] ({raw.get('type')} {name!r}): the name {name!r} is already "
                                 f"{where}[{taken[name]}]'s; give each grader its own name")
            taken[name] = i
    names = []
    for i, raw in enumerate(specs):
        if isinstance(raw, dict) and "name" in raw:
            names.append(raw["name"])
            continue
        kind = raw.get("type") if isinstance(raw, dict) else None
        base = (default_name(raw.get("function")) if kind == "function" else None) or (
            kind if isinstance(kind, str) and kind else "grader")
        name, number = base, 2
        while name in taken:
            name, number = f"{base}_{number}", number + 1
        taken[name] = i
        names.append(name)
    return names


def load_graders(specs: list[dict], base_dir: Path, where: str = "grpo.graders") -> "Graders":
    """Graders from specs (OpenAI-shaped dicts); files they name are relative to `base_dir`; `where` starts every
    error line. Nothing runs yet: python workers start at the first batch."""
    if not isinstance(specs, (list, tuple)):
        raise UsageError(f"{where}: expected a list of graders, got {type(specs).__name__}")
    if not specs:
        raise UsageError(f"{where}: no graders; give at least one, e.g. {{type: string_check, input: "
                         "'{{sample.output_text}}', reference: '{{item.answer}}', operation: eq}")
    names = grader_names(list(specs), where)
    built: list[Grader] = []
    try:
        for i, (raw, name) in enumerate(zip(specs, names)):
            built.append(build_grader(raw, f"{where}[{i}]", name, Path(base_dir)))
    except BaseException:
        for grader in built:
            grader.close()
        raise
    return Graders(built)


class Graders:
    """The loaded graders, in spec order. Use as a context manager (or call close()) to stop python workers."""

    def __init__(self, graders: list[Grader]):
        self.graders = graders
        self._cache = BatchCache()

    @property
    def names(self) -> list[str]:
        return [grader.name for grader in self.graders]

    def describe(self) -> list[dict]:
        return [{"name": grader.name, "type": grader.type} for grader in self.graders]

    def score(self, completions: list, items: list[dict], wheres: list[str],
              prompts: list | None = None) -> dict[str, list[float]]:
        """name -> one score per completion, for every grader; GraderError if one fails on a row."""
        check_lengths(len(completions), items=items, wheres=wheres, prompts=prompts)
        batch = Batch([completion_text(c) for c in completions], list(items), [str(w) for w in wheres],
                      None if prompts is None else list(prompts), raw=list(completions))
        return {grader.name: grader.score(batch) for grader in self.graders}

    def reward_functions(self) -> list[Callable[..., list[float]]]:
        """One TRL reward function per grader, named as the grader (TRL logs rewards/<name>)."""
        return [self._reward_function(grader) for grader in self.graders]

    def _reward_function(self, grader: Grader) -> Callable[..., list[float]]:
        def reward(prompts: list | None = None, completions: list | None = None, **kwargs: Any) -> list[float]:
            return grader.score(self._cache.batch(prompts, completions if completions is not None else [], kwargs))

        reward.__name__ = reward.__qualname__ = grader.name
        reward.__doc__ = f"qlora-kit {grader.type} grader {grader.name!r} as a TRL reward function."
        return reward

    def close(self) -> None:
        for grader in self.graders:
            grader.close()

    def __enter__(self) -> "Graders":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.graders)

    def __repr__(self) -> str:
        return f"Graders({', '.join(f'{g.name}:{g.type}' for g in self.graders)})"
