"""`model.name: ollama:NAME[:TAG]`: find a model's GGUF in Ollama's own local store, without Ollama running.

The store (`$OLLAMA_MODELS`, default ~/.ollama/models) is content-addressed, OCI-style:

    manifests/<host>/<namespace>/<model>/<tag>   JSON: {"schemaVersion": 2, "config": {...}, "layers": [...]}
    blobs/sha256-<hex>                           every layer, named by the sha256 of its bytes

A name is `[host/][namespace/]model[:tag]`, filled with Ollama's defaults (registry.ollama.ai, library, latest),
as its `types/model/name.go` does. Layers are told apart by media type: `application/vnd.ollama.image.model` is the
GGUF; `...template` holds the Go chat template and `...params` a JSON object (stop strings, sampling) that Ollama
applies on top of the GGUF. The template layer is what the user's model actually runs with, so it picks the chat
template we train with (see qlora_kit.model.gguf_source).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from qlora_kit.errors import UsageError

PREFIX = "ollama:"
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MODEL_LAYER = "application/vnd.ollama.image.model"
TEMPLATE_LAYER = "application/vnd.ollama.image.template"
PARAMS_LAYER = "application/vnd.ollama.image.params"
SYSTEM_LAYER = "application/vnd.ollama.image.system"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def short(self) -> str:
        """How Ollama shows it: default host and namespace left out."""
        prefix = "" if (self.host, self.namespace) == (DEFAULT_HOST, DEFAULT_NAMESPACE) else \
            (f"{self.namespace}/" if self.host == DEFAULT_HOST else f"{self.host}/{self.namespace}/")
        return f"{prefix}{self.model}:{self.tag}"


@dataclass
class OllamaModel:
    name: OllamaName
    manifest: Path
    gguf: Path
    digest: str  # hex sha256 the manifest gives for the GGUF blob
    template: str | None = None  # Go text/template, when the manifest has a template layer
    params: dict = field(default_factory=dict)
    system: str | None = None


def models_root() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def parse_name(spec: str) -> OllamaName:
    """'ollama:smollm2:135m' -> OllamaName('registry.ollama.ai', 'library', 'smollm2', '135m')."""
    text = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    path, _, tag = text.rpartition(":") if ":" in text.rsplit("/", 1)[-1] else (text, "", "")
    parts = path.split("/")
    if not 1 <= len(parts) <= 3 or not all(_PART.match(p) for p in parts) or (tag and not _PART.match(tag)):
        raise UsageError(f"model.name: {spec!r} is not an Ollama model name; expected ollama:NAME or "
                         "ollama:NAME:TAG (e.g. ollama:smollm2:135m)")
    if len(parts) == 3:
        host, namespace = parts[0], parts[1]
    else:
        host, namespace = DEFAULT_HOST, parts[0] if len(parts) == 2 else DEFAULT_NAMESPACE
    return OllamaName(host, namespace, parts[-1], tag or DEFAULT_TAG)


def available(root: Path) -> list[str]:
    """Every name:tag with a manifest in the store, as Ollama lists them."""
    base = root / "manifests"
    found = []
    for manifest in base.glob("*/*/*/*") if base.is_dir() else []:
        if manifest.is_file():
            host, namespace, model, tag = manifest.relative_to(base).parts
            found.append(OllamaName(host, namespace, model, tag).short)
    return sorted(found)


def locate(spec: str) -> OllamaModel:
    """Manifest -> GGUF blob (+ template/params), checking everything but the blob's hash (see verify_blob)."""
    name, root = parse_name(spec), models_root()
    manifest = root / "manifests" / name.host / name.namespace / name.model / name.tag
    if not manifest.is_file():
        names = available(root)
        listed = f"models in the store: {', '.join(names)}" if names else "the store has no models"
        raise UsageError(f"model.name: {spec}: no Ollama model {name.short} in {root} ({listed}; set OLLAMA_MODELS "
                         "if your store is elsewhere)")
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        by_type = {layer["mediaType"]: layer for layer in layers}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"model.name: {spec}: {manifest} is not an Ollama manifest ({type(exc).__name__}: {exc})") \
            from None
    if MODEL_LAYER not in by_type:
        raise UsageError(f"model.name: {spec}: {manifest} has no model layer ({MODEL_LAYER}); it holds "
                         f"{', '.join(sorted(by_type)) or 'no layers'}; an adapter-only or remote model cannot be "
                         "fine-tuned: use the base model it was made from")
    digest, gguf = _blob(root, by_type[MODEL_LAYER], spec)
    found = OllamaModel(name, manifest, gguf, digest)
    if TEMPLATE_LAYER in by_type:
        found.template = _blob(root, by_type[TEMPLATE_LAYER], spec)[1].read_text(encoding="utf-8")
    if SYSTEM_LAYER in by_type:
        found.system = _blob(root, by_type[SYSTEM_LAYER], spec)[1].read_text(encoding="utf-8")
    if PARAMS_LAYER in by_type:
        try:
            found.params = json.loads(_blob(root, by_type[PARAMS_LAYER], spec)[1].read_text(encoding="utf-8"))
        except ValueError:
            raise UsageError(f"model.name: {spec}: its params layer is not JSON") from None
    return found


def _blob(root: Path, layer: dict, spec: str) -> tuple[str, Path]:
    match = _DIGEST.match(str(layer.get("digest", "")))
    if not match:
        raise UsageError(f"model.name: {spec}: layer {layer.get('mediaType')} has no sha256 digest "
                         f"({layer.get('digest')!r})")
    hexdigest = match.group(1)
    # Current Ollama names blobs sha256-<hex>; versions before 0.1.30 or so used sha256:<hex>.
    for candidate in (root / "blobs" / f"sha256-{hexdigest}", root / "blobs" / f"sha256:{hexdigest}"):
        if candidate.is_file():
            return hexdigest, candidate
    raise UsageError(f"model.name: {spec}: blob sha256-{hexdigest} ({layer.get('mediaType')}) is missing from "
                     f"{root / 'blobs'}; pull the model again (`ollama pull {spec[len(PREFIX):]}`)")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_blob(model: OllamaModel, spec: str) -> str:
    """The blob's sha256, which must be the digest its manifest names (a partial or corrupted pull is not)."""
    actual = sha256_file(model.gguf)
    if actual != model.digest:
        raise UsageError(f"model.name: {spec}: blob {model.gguf} does not match its digest (sha256 {actual[:12]}... "
                         f"instead of {model.digest[:12]}...): the file is damaged or incomplete; pull the model "
                         "again")
    return actual
