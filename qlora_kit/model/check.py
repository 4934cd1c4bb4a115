"""Check a base model before any loader sees it, so a broken or unusual model directory is one line, not a trace.

- config.json that transformers cannot turn into a config (a Llama checkpoint labelled `falcon`, a missing key):
  the loaders fail deep inside transformers after logging the whole config; here it is one UsageError (exit 2)
  naming the directory and the reason, before a run directory is written.
- Custom code (`auto_map` in config.json) while model.trust_remote_code is false: transformers then silently uses
  its built-in class for the model_type. That is the safe choice, so it stands, but it is said (a warning line,
  and a `warning` event in the run); with no built-in class the model is refused with the fix.
- Weights: every safetensors file the directory names must be there, with a readable header and all its bytes,
  and each tensor the shape config.json implies (transformers would otherwise re-initialize a mismatched tensor
  at random, with a note in its log, and training fails later or learns from noise).
`loading` turns what still fails inside a loader into the same kind of one line.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from qlora_kit.errors import QKError, UsageError, first_line, is_oom
from qlora_kit.errors import warn
from qlora_kit.recipe.schema import ModelSection

CAUSAL_LM_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModel")


def check_model(cfg: ModelSection) -> list[str]:
    """Raise UsageError for a model the loaders cannot load; return (and print) warnings about one they can."""
    from qlora_kit.model.resolve import resolve_model_path

    path = resolve_model_path(cfg.name)
    with _quiet_transformers():
        raw = _config_dict(path, cfg)
        notes = _remote_code_notes(raw, path, cfg)
        config = _build_config(raw, path, cfg)
        if Path(path).is_dir():
            check_weights(Path(path), config, cfg.trust_remote_code)
    for note in notes:
        warn(note)
    return notes


def check_config(path: Path) -> None:
    """config.json of a model directory a command reads without a recipe (export's SOURCE) builds, or one line
    naming the directory (exit 2); transformers' own error would follow its dump of the whole config."""
    cfg = ModelSection(name=str(path))
    with _quiet_transformers():
        _build_config(_config_dict(str(path), cfg, str(path)), str(path), cfg, str(path))


def _config_dict(path: str, cfg: ModelSection, where: str = "") -> dict:
    from transformers import PretrainedConfig

    where = where or f"model.name: {path}"
    try:
        raw, _ = PretrainedConfig.get_config_dict(path, revision=cfg.revision)
    except Exception as exc:  # unreadable JSON, no config.json, not in the cache: one line either way
        raise UsageError(f"{where}: cannot read config.json ({first_line(exc, type(exc).__name__)})") from None
    if not isinstance(raw, dict) or not raw.get("model_type"):
        raise UsageError(f"{where}: config.json has no model_type; it is not a transformers model config")
    return raw


def _remote_code_notes(raw: dict, path: str, cfg: ModelSection) -> list[str]:
    auto_map = raw.get("auto_map") or {}
    if not auto_map or cfg.trust_remote_code:
        return []
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = raw["model_type"]
    shipped = ", ".join(f"{k}: {v if isinstance(v, str) else v[0]}" for k, v in auto_map.items()
                        if k in CAUSAL_LM_AUTO_CLASSES + ("AutoConfig",)) or ", ".join(auto_map)
    if model_type not in CONFIG_MAPPING_NAMES or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UsageError(f"model.name: {path} needs the model code it ships (auto_map: {shipped}) and transformers "
                         f"has no built-in causal LM for model_type {model_type!r}; set model.trust_remote_code: true "
                         "only if you trust that code")
    return [f"model.name: {path} ships its own model code (auto_map: {shipped}); model.trust_remote_code is "
            f"false, so transformers' built-in {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]} is used instead "
            "(set model.trust_remote_code: true only if you trust that code)"]


def _build_config(raw: dict, path: str, cfg: ModelSection, where: str = ""):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    except Exception as exc:
        label = "".join((raw.get("architectures") or [""])[:1])
        raise UsageError(f"{where or 'model.name: ' + path}: transformers cannot build a config from config.json "
                         f"(model_type {raw['model_type']!r}{', ' + label if label else ''}): "
                         f"{type(exc).__name__}: {first_line(exc)}; check that config.json belongs with these "
                         "weights") from exc  # --debug: transformers' own traceback too


def check_weights(path: Path, config=None, trust_remote_code: bool = False) -> None:
    """Every safetensors file named (by the index, else by the directory) is complete and, given the config, holds
    tensors of the shapes it implies. Reads headers only; the model is built on the meta device (no memory)."""
    import json

    from qlora_kit.merging.checkpoint import read_header

    index = path / "model.safetensors.index.json"
    try:
        files = [path / f for f in dict.fromkeys(json.loads(index.read_text())["weight_map"].values())] \
            if index.is_file() else sorted(path.glob("*.safetensors"))
    except (ValueError, KeyError, AttributeError) as exc:
        raise UsageError(f"model.name: {index}: unreadable safetensors index ({exc})") from None
    shapes: dict[str, tuple[Path, list[int]]] = {}
    for file in files:
        if not file.is_file():
            raise UsageError(f"model.name: {path}: {file.name} is listed in {index.name} but missing")
        header = read_header(file)
        end = max((e["end"] for e in header.values()), default=0)
        size = file.stat().st_size
        if size < end:
            raise UsageError(f"model.name: {file}: truncated ({size:,} of {end:,} bytes); copy or download it again")
        shapes.update({name: (file, e["shape"]) for name, e in header.items()})
    if config is not None and not getattr(config, "quantization_config", None):  # packed 4-bit shapes differ
        _check_shapes(path, shapes, config, trust_remote_code)


def _check_shapes(path: Path, shapes: dict, config, trust_remote_code: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001  a class only a backend's own loader builds (multimodal wrappers, ...):
        return  # nothing to compare with here; `loading` still turns the loader's failure into one line
    for name, tensor in model.state_dict().items():
        file, shape = shapes.get(name, (None, None))
        if file is not None and list(shape) != list(tensor.shape):
            raise UsageError(f"model.name: {file}: {name} has shape {list(shape)} but config.json implies "
                             f"{list(tensor.shape)}; check that config.json belongs with these weights")


@contextlib.contextmanager
def loading(path: str):
    """What still fails while a loader reads the model directory: one line naming it, exit 2 (out-of-memory and
    qlora-kit's own errors pass through unchanged)."""
    try:
        yield
    except (QKError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if is_oom(exc):
            raise
        raise UsageError(f"model.name: {path}: cannot load the model: {type(exc).__name__}: {first_line(exc)}") \
            from exc


@contextlib.contextmanager
def _quiet_transformers():
    """transformers logs the whole config (dozens of lines) before raising on a bad one; our one line says it."""
    import transformers.utils.logging  # noqa: F401  sets its logger's level on first import, undoing ours below

    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
