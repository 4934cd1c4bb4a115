"""What the server refuses: it runs code on the user's GPU and reads and writes files for whoever can reach it.

- It listens on the loopback interface unless told otherwise, and any other interface needs a bearer token,
  compared in constant time (`hmac.compare_digest`), so a timing probe learns nothing about it.
- Every path a client names (recipe file, data.path, data.eval_path, a local model.name, output.dir, artifact
  names) must resolve, after following every symlink, inside the root or an allowed data directory; `..` is
  refused outright even where it would land inside.
- `model.trust_remote_code: true` runs code from the model's repository, and GRPO's python and function graders
  run code a client sent or named: refused unless the server was started with --allow-remote-code. A grader's
  file (python `file`, json_schema `schema_file`) is refused outright: graders come inline over HTTP.
- Request bodies and recipe files are bounded (a recipe is a few kilobytes; anything bigger is a mistake or abuse).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from pathlib import Path
from typing import Any, Iterable

MAX_BODY_BYTES = 1 << 20  # default request-body limit
MAX_RECIPE_BYTES = 256 << 10
LOCAL_SOURCES = ("builtin:", "hf:")  # data sources that are not files


class Refused(Exception):
    """A request the server will not carry out; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_matches(authorization: str | None, token: str) -> bool:
    """`Authorization: Bearer TOKEN`, compared in constant time (also when the header is missing or malformed)."""
    given = ""
    if authorization and authorization[:7].lower() == "bearer ":
        given = authorization[7:].strip()
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


class Confiner:
    """Resolves client paths: relative ones against the root; every result must lie inside an allowed directory."""

    def __init__(self, root: Path, data_dirs: Iterable[Path] = ()):
        self.root = Path(root).resolve()
        self.allowed = [self.root, *(Path(d).resolve() for d in data_dirs)]

    def path(self, given: str, field: str) -> Path:
        if not isinstance(given, str) or not given or "\x00" in given:
            raise Refused(f"{field}: not a usable path")
        p = Path(given)
        if ".." in p.parts:
            raise Refused(f"{field}: {given!r}: '..' is not allowed; give a path inside the server root")
        resolved = (p if p.is_absolute() else self.root / p).resolve()  # follows symlinks, existing or not
        if not any(resolved == d or resolved.is_relative_to(d) for d in self.allowed):
            why = "a symlink that leads" if _has_symlink(p if p.is_absolute() else self.root / p) else "it is"
            raise Refused(f"{field}: {given!r}: {why} outside the server root {self.root}"
                          + (" and the allowed --data-dir directories" if len(self.allowed) > 1 else ""))
        return resolved

    def inside(self, path: Path, base: Path) -> bool:
        resolved = Path(path).resolve()
        return resolved.is_relative_to(Path(base).resolve())


def _has_symlink(path: Path) -> bool:
    probe = Path(path)
    for candidate in (probe, *probe.parents):
        if candidate.is_symlink():
            return True
    return False


def confine_recipe(raw: dict[str, Any], confiner: Confiner, allow_remote_code: bool) -> dict[str, Any]:
    """The recipe dict with every path it names made absolute and checked (raises Refused).
    Runs before validation, so refusals come first and validation sees the paths it will use."""
    raw = json.loads(json.dumps(raw))  # a deep copy that also proves it is plain JSON data
    if len(json.dumps(raw)) > MAX_RECIPE_BYTES:
        raise Refused(f"recipe: larger than {MAX_RECIPE_BYTES // 1024} KiB", status=413)
    model, data, output = (_section(raw, name) for name in ("model", "data", "output"))
    if model.get("trust_remote_code") is True and not allow_remote_code:
        raise Refused("model.trust_remote_code: true is refused: it runs the model repository's code; start the "
                      "server with --allow-remote-code to allow it")
    graders = raw.get("grpo", {}).get("graders") if isinstance(raw.get("grpo"), dict) else None
    refusal = grader_refusal(graders if isinstance(graders, list) else [], "grpo.graders", allow_remote_code)
    if refusal:
        raise Refused(refusal)
    for field in ("path", "eval_path"):
        value = data.get(field)
        if isinstance(value, str) and value and not value.startswith(LOCAL_SOURCES):
            data[field] = str(confiner.path(value, f"data.{field}"))
    name = model.get("name")
    if isinstance(name, str) and not name.startswith("builtin:") and _looks_local(name, confiner.root):
        model["name"] = str(confiner.path(name, "model.name"))
    out = output.get("dir", "runs")
    output["dir"] = str(confiner.path(out if isinstance(out, str) else "", "output.dir"))
    return raw


def grader_refusal(specs: list, where: str, allow_code: bool) -> str | None:
    """Why the server will not run these grader specs (None: it will), multi's sub-graders included."""
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict):
            continue
        at = f"{where}[{i}]"
        if spec.get("type") in ("python", "function") and not allow_code:
            return (f"{at}: a {spec['type']} grader runs code on this machine; start the server with "
                    "--allow-remote-code to allow it")
        named = next((key for key in ("file", "schema_file") if key in spec), None)
        if named:
            return f"{at}: {named} names a file on the server; give the grader inline (python source, json schema)"
        inner = spec.get("graders")
        refusal = grader_refusal(list(inner.values()), f"{at}.graders", allow_code) if isinstance(inner, dict) \
            else None
        if refusal:
            return refusal
    return None


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    if value is None:
        value = raw[name] = {}
    if not isinstance(value, dict):
        return {}  # validation reports the section's type
    return value


def _looks_local(name: str, root: Path) -> bool:
    """A local model directory rather than a Hub id (ORG/NAME): a path-like spelling, or it exists under the root."""
    return name.startswith(("/", ".", "~")) or ".." in Path(name).parts or (root / name).exists()
