"""OpenAI's grader templates: `{{sample.output_text}}`, `{{sample.output_json.key}}`, `{{item.field}}`,
`{{item.a.b}}`, `{{item.choices.0}}` (or `{{item.choices[0]}}`), mixed with literal text; a string without `{{`
is a literal. A value that is not a string renders as JSON (`3`, `true`, `{"a": 1}`).

A path that does not resolve raises `MissingField`: the graders make a missing *item* field a GraderError naming
the row (the data is wrong), and a missing *sample* field (the completion is not JSON, or lacks the key) a score
of 0.0 for that completion (the model's answer is wrong, which is what the reward is for).
"""

from __future__ import annotations

import json
import re
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_INDEX = re.compile(r"\[(-?\d+)\]")
_PART = re.compile(r"^[^.\s{}\[\]]+$")
SAMPLE_FIELDS = ("output_text", "output_json")


class MissingField(LookupError):
    def __init__(self, root: str, path: str, placeholder: str):
        super().__init__(f"{root}.{path}")
        self.root, self.path, self.placeholder = root, path, placeholder


def _parse_placeholder(text: str) -> tuple[str, tuple[str, ...]]:
    dotted = _INDEX.sub(r".\1", text.strip())
    root, _, path = dotted.partition(".")
    parts = tuple(path.split(".")) if path else ()
    if root not in ("sample", "item") or not parts or not all(_PART.match(p) for p in parts):
        raise ValueError(f"unknown template {{{{{text.strip()}}}}}; use {{{{sample.output_text}}}}, "
                         "{{sample.output_json.KEY}} or {{item.FIELD}} (dotted for nested fields)")
    if root == "sample" and (parts[0] not in SAMPLE_FIELDS or (parts[0] == "output_text" and len(parts) > 1)):
        raise ValueError(f"unknown template {{{{{text.strip()}}}}}; sample has output_text and output_json")
    return root, parts


def lookup(value: Any, parts: tuple[str, ...]) -> Any:
    """Walk dict keys and list indices; KeyError if the path does not resolve."""
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class Template:
    """A parsed template; `render(sample, item)` -> str, or MissingField."""

    def __init__(self, text: str):
        self.text = text
        self.parts: list[str | tuple[str, tuple[str, ...], str]] = []
        end = 0
        for match in _PLACEHOLDER.finditer(text):
            self.parts.append(text[end:match.start()])
            self.parts.append((*_parse_placeholder(match.group(1)), match.group(0)))
            end = match.end()
        rest = text[end:]
        if "{{" in rest:
            raise ValueError(f"unclosed {{{{ in {text!r}")
        self.parts.append(rest)
        self.parts = [p for p in self.parts if p != ""]

    @property
    def item_fields(self) -> list[str]:
        return [".".join(p[1]) for p in self.parts if isinstance(p, tuple) and p[0] == "item"]

    def render(self, sample: dict, item: dict) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            root, path, placeholder = part
            if root == "sample" and path[0] == "output_json" and sample.get("output_json") is None:
                raise MissingField(root, ".".join(path), placeholder)  # the completion is not JSON
            try:
                out.append(as_text(lookup(sample if root == "sample" else item, path)))
            except KeyError:
                raise MissingField(root, ".".join(path), placeholder) from None
        return "".join(out)
