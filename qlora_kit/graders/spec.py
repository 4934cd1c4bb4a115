"""Reading one grader spec (a dict shaped like an OpenAI grader) with one-line errors that start with its location:
`grpo.graders[1] (text_similarity 'close'): evaluation_metric 'cosine' needs an embedding model, ...`."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable

from qlora_kit.errors import UsageError
from qlora_kit.graders.template import Template

_MISSING = object()
_TYPE_NAMES = {str: "a string", float: "a number", int: "an integer", dict: "a mapping", list: "a list",
               bool: "true or false"}


def did_you_mean(word: str, choices) -> str:
    """" (did you mean 'X'?)" naming the closest choice, or ""."""
    close = difflib.get_close_matches(str(word).lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Spec:
    """One spec being loaded. `build` loads a nested spec (multi's sub-graders) through the loader's dispatch."""

    def __init__(self, raw: dict, location: str, name: str, base_dir: Path, build: Callable[..., Any]):
        self.raw, self.name, self.base_dir, self.build = raw, name, base_dir, build
        self.type = raw.get("type")
        self.location = f"{location} ({self.type} {name!r})"
        self.path = location

    def error(self, message: str) -> UsageError:
        return UsageError(f"{self.location}: {message}")

    def allow(self, *keys: str) -> None:
        """Refuse keys this type does not know (a typo such as "refrence" would otherwise be ignored)."""
        known = {"type", "name", *keys}
        unknown = [k for k in self.raw if k not in known]
        if unknown:
            raise self.error(f"unknown field {unknown[0]!r}{did_you_mean(unknown[0], known)}; {self.type} takes "
                             f"{', '.join(sorted(known))}")

    def get(self, key: str, kind: type | tuple = str, default: Any = _MISSING) -> Any:
        """The field's value, checked to be of `kind` (float accepts integers; bool is never a number)."""
        if key not in self.raw:
            if default is _MISSING:
                raise self.error(f"missing field {key!r}")
            return default
        value = self.raw[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = any(isinstance(value, k) for k in kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise self.error(f"field {key!r} must be {wanted}, got {type(value).__name__}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.error(f"unknown {key} {value!r}{did_you_mean(value, choices)}; valid: {', '.join(choices)}")
        return value

    def positive(self, key: str, default: float) -> float:
        value = self.get(key, float, default)
        if not value > 0:
            raise self.error(f"field {key!r} must be > 0, got {value:g}")
        return value

    def file(self, key: str) -> Path:
        """A file named relative to the base directory (an absolute path is kept); it must exist."""
        text = self.get(key, str)
        path = Path(text).expanduser()
        path = path if path.is_absolute() else self.base_dir / path
        if not path.is_file():
            raise self.error(f"{key} {text} not found (looked for {path})")
        return path

    def template(self, key: str, default: Any = _MISSING) -> Template | None:
        text = self.get(key, str, default)
        if text is None:
            return None
        try:
            return Template(text)
        except ValueError as exc:
            raise self.error(f"{key}: {exc}") from None
