"""Format rewards (ours): `tags` and `json_schema`.

tags: 1.0 if the completion holds exactly one <TAG>...</TAG> (one opening and one closing tag, in that order)
whose content is not blank; with `reference` (a template, e.g. "{{item.answer}}"), 1.0 only if the stripped
content also equals the stripped reference. Else 0.0.

json_schema: 1.0 if the completion, stripped (one ```json fenced block around the whole of it allowed), parses as
JSON and validates against the schema (`schema`: inline, or `schema_file`: a JSON file relative to the base
directory); else 0.0. The schema itself is checked at load (jsonschema's check_schema for its draft).
"""

from __future__ import annotations

import json
import re

from qlora_kit.graders.base import Batch, Grader
from qlora_kit.graders.spec import Spec

_TAG_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")


class Tags(Grader):
    type = "tags"

    def __init__(self, spec: Spec):
        super().__init__(spec.name)
        spec.allow("tag", "reference")
        self.tag = spec.get("tag")
        if not _TAG_NAME.match(self.tag):
            raise spec.error(f"tag {self.tag!r} is not a tag name (write answer for <answer>...</answer>)")
        self.reference = spec.template("reference", None)
        self.open, self.close_tag = f"<{self.tag}>", f"</{self.tag}>"

    def content(self, text: str) -> str | None:
        """The one tag's stripped content, or None if there is not exactly one non-empty pair."""
        if text.count(self.open) != 1 or text.count(self.close_tag) != 1:
            return None
        start, end = text.index(self.open) + len(self.open), text.index(self.close_tag)
        inside = text[start:end].strip() if end >= start else ""
        return inside or None

    def score(self, batch: Batch) -> list[float]:
        out = []
        for i, text in enumerate(batch.completions):
            inside = self.content(text)
            if inside is None or self.reference is None:
                out.append(float(inside is not None))
                continue
            reference = self.render(self.reference, batch, i)
            out.append(float(reference is not None and inside == reference.strip()))
        return out


class JsonSchema(Grader):
    type = "json_schema"

    def __init__(self, spec: Spec):
        super().__init__(spec.name)
        spec.allow("schema", "schema_file")
        if ("schema" in spec.raw) == ("schema_file" in spec.raw):
            raise spec.error("give one of 'schema' (inline) or 'schema_file' (a JSON file)")
        if "schema" in spec.raw:
            schema = spec.get("schema", (dict, bool))
        else:
            path = spec.file("schema_file")
            try:
                schema = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise spec.error(f"schema_file {path.name} is not JSON: {exc}") from None
        self.validator = _validator(spec, schema)

    def score(self, batch: Batch) -> list[float]:
        return [float(sample["output_json"] is not None and self.validator.is_valid(sample["output_json"]))
                for sample in batch.samples]


def _validator(spec: Spec, schema):
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise spec.error(f"the schema is not valid: {exc.message}") from None
    return cls(schema)
