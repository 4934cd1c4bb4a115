"""GGUF files and Ollama models as the base: `gguf:PATH`, `ollama:NAME[:TAG]`, on small GGUFs written by our own
export of builtin:tiny-llama (no network), laid out in a real Ollama store format where needed; and bad input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import run_cli, write_recipe

TEXTS = ["What is the capital of Peru?", "  spaces   and 1234 digits\n", "Ünïcödé 日本 🤗", "<|im_start|>user\nhi<|im_end|>"]


def export_tiny(tiny_model_dir: Path, out: Path, quant: str) -> Path:
    from qlora_kit.gguf.run import ExportOptions, export

    export(tiny_model_dir, ExportOptions(quant=[quant], verify=False), out)
    return next(out.glob(f"*-{quant}.gguf"))


@pytest.fixture(scope="session")
def tiny_ggufs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny-gguf")
    return {q: export_tiny(tiny_model_dir, out / q, q) for q in ("f32", "q4_0")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_blob(root: Path, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def ollama_store(root: Path, gguf: Path, name="tiny", tag="latest", template: str | None = None,
                 params: dict | None = None, with_model=True) -> Path:
    """Ollama's on-disk layout: blobs/sha256-<hex>, manifests/registry.ollama.ai/library/<name>/<tag>."""
    layers = [write_blob(root, gguf.read_bytes(), "application/vnd.ollama.image.model")] if with_model else []
    if template is not None:
        layers.append(write_blob(root, template.encode(), "application/vnd.ollama.image.template"))
    if params is not None:
        layers.append(write_blob(root, json.dumps(params).encode(), "application/vnd.ollama.image.params"))
    config = write_blob(root, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode(),
                        "application/vnd.docker.container.image.v1+json")
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2"
                                    "+json", "config": config, "layers": layers}))
    return root


def complete_cache_entries() -> list[Path]:
    root = Path(os.environ["QLORA_KIT_HOME"]) / "gguf"
    return [p for p in root.glob("v*/*") if (p / "qlora_kit_source.json").is_file()] if root.is_dir() else []


# --- names and the store, no model loading -------------------------------------------------------------------

@pytest.mark.parametrize("spec, parts", [
    ("ollama:smollm2", ("registry.ollama.ai", "library", "smollm2", "latest")),
    ("ollama:smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m")),
    ("ollama:me/tuned:v2", ("registry.ollama.ai", "me", "tuned", "v2")),
    ("ollama:example.com/me/tuned", ("example.com", "me", "tuned", "latest")),
])
def test_ollama_names_fill_ollamas_defaults(spec, parts):
    from qlora_kit.model.ollama_store import parse_name

    name = parse_name(spec)
    assert (name.host, name.namespace, name.model, name.tag) == parts
    assert name.short == spec[len("ollama:"):] + ("" if ":" in spec[len("ollama:"):] else ":latest")


def test_unknown_ollama_name_lists_the_store(tmp_path, monkeypatch):
    from qlora_kit.errors import UsageError
    from qlora_kit.model.ollama_store import locate

    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    ollama_store(tmp_path / "store", gguf, "alpha", "latest")
    ollama_store(tmp_path / "store", gguf, "beta", "7b")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "store"))
    with pytest.raises(UsageError, match=r"no Ollama model gamma:latest .*models in the store: alpha:latest, beta:7b"):
        locate("ollama:gamma")
    with pytest.raises(UsageError, match=r"no Ollama model beta:latest"):
        locate("ollama:beta")  # the tag defaults to latest, as in Ollama
    assert locate("ollama:beta:7b").gguf.read_bytes() == gguf.read_bytes()


def test_bad_gguf_sources_are_one_line_exit_2(tmp_path, monkeypatch):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("this is not a model\n")
    store = tmp_path / "store"
    ollama_store(store, not_gguf, "nolayer", with_model=False, template="{{ .Prompt }}")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    cases = {
        str(not_gguf): "is not a GGUF file",
        f"gguf:{tmp_path / 'missing.gguf'}": "no such GGUF file",
        "ollama:absent": "models in the store: nolayer:latest",
        "ollama:nolayer": "has no model layer (application/vnd.ollama.image.model)",
        "pkg:qlora_kit_no_such_package/x.gguf": "Python package qlora_kit_no_such_package is not installed",
    }
    for name, message in cases.items():
        recipe = write_recipe(tmp_path / "r.yaml", model={"name": name})
        done = run_cli("validate", str(recipe))
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (name, done.stderr)


# --- dequantization into the cache -----------------------------------------------------------------------------

@pytest.mark.slow
def test_gguf_from_our_export_dequantizes_exactly_and_is_cached(tiny_ggufs, tiny_model_dir, capsys):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from qlora_kit.model.resolve import resolve_model

    source = tiny_ggufs["f32"]
    resolved = resolve_model(f"gguf:{source}")
    out, facts = Path(resolved.path), resolved.source
    assert facts["sha256"] == sha256(source) and out.name == facts["sha256"]
    assert (facts["quant_type"], facts["below_q8_0"], facts["dtype"], facts["architecture"]) == \
        ("F32", False, "float32", "llama")
    assert "warning" not in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 2
    # F32 in, F32 out: every tensor comes back bit for bit (Q/K permutation undone by the loader).
    original, cached = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(cached) == set(original)
    assert max(float((cached[k] - original[k]).abs().max()) for k in original) == 0.0
    # The GGUF-built tokenizer, saved with byte_fallback normalised, encodes like the model's own.
    assert json.loads((out / "tokenizer.json").read_text())["model"]["byte_fallback"] is False
    mine, theirs = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_model_dir)
    for text in TEXTS:
        assert mine.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False), text
    # Second use: straight from the cache (no dequantization, nothing rewritten).
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = resolve_model(str(source))  # a plain path ending in .gguf works too
    assert again.path == resolved.path and (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert "dequantizing" not in capsys.readouterr().out


@pytest.mark.slow
def test_source_below_q8_0_warns_and_is_saved_in_bf16(tiny_ggufs, capsys):
    from qlora_kit.model.resolve import resolve_model

    resolved = resolve_model(f"gguf:{tiny_ggufs['q4_0']}")
    err = capsys.readouterr().err.strip().splitlines()
    warnings = [line for line in err if "warning" in line]
    assert len(warnings) == 1 and "quantized to Q4_0 (below Q8_0)" in warnings[0]
    assert resolved.source["below_q8_0"] and resolved.source["dtype"] == "bfloat16"
    assert json.loads((Path(resolved.path) / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.slow
def test_architecture_transformers_cannot_dequantize(tmp_path):
    import gguf
    import numpy as np

    from qlora_kit.errors import UsageError
    from qlora_kit.model.resolve import resolve_model

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(path, "rwkv7")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    before = complete_cache_entries()
    with pytest.raises(UsageError, match="transformers cannot dequantize GGUF architecture 'rwkv7'; it supports: .*llama"):
        resolve_model(f"gguf:{path}")
    assert complete_cache_entries() == before
    assert not [p for p in (Path(os.environ["QLORA_KIT_HOME"]) / "gguf").rglob(".*") if p.is_dir()]


@pytest.mark.slow
def test_ollama_model_uses_its_template_layer_and_verifies_the_blob(tiny_ggufs, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from qlora_kit.data.templates import CHAT_TEMPLATES
    from qlora_kit.errors import UsageError
    from qlora_kit.gguf.ollama.ollama import ollama_template
    from qlora_kit.model.resolve import resolve_model

    store = ollama_store(tmp_path / "store", tiny_ggufs["f32"], "tiny", "latest", template=ollama_template("chatml"),
                         params={"stop": ["<|im_start|>", "<|im_end|>"]})
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    resolved = resolve_model("ollama:tiny")
    facts = resolved.source
    assert facts["sha256"] == sha256(tiny_ggufs["f32"]) and facts["ollama"]["name"] == "tiny:latest"
    assert facts["ollama"]["params"]["stop"] == ["<|im_start|>", "<|im_end|>"]
    # The GGUF has no chat template; Ollama runs it with ChatML, so the cached tokenizer gets our ChatML twin.
    assert facts["chat_template"].startswith("built-in chatml") and Path(resolved.path).name.endswith("-chatml")
    assert AutoTokenizer.from_pretrained(resolved.path).chat_template == CHAT_TEMPLATES["chatml"].jinja

    # A blob whose bytes do not match its digest: refused before anything is cached.
    other = ollama_store(tmp_path / "bad", tiny_ggufs["q4_0"], "broken")
    blob = next(p for p in (other / "blobs").iterdir() if p.stat().st_size > 10_000)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    monkeypatch.setenv("OLLAMA_MODELS", str(other))
    before = complete_cache_entries()
    with pytest.raises(UsageError, match=r"ollama:broken: blob .* does not match its digest"):
        resolve_model("ollama:broken")
    assert complete_cache_entries() == before


@pytest.mark.slow
def test_train_from_an_ollama_store_and_export_back(tiny_ggufs, tmp_path, monkeypatch):
    """The round trip users want: a model from their Ollama store, fine-tuned, exported with a Modelfile."""
    from qlora_kit.gguf.ollama.ollama import ollama_template

    store = ollama_store(tmp_path / "store", tiny_ggufs["f32"], "tiny", "v1", template=ollama_template("chatml"),
                         params={"stop": ["<|im_end|>"]})
    recipe = write_recipe(tmp_path / "ollama.yaml", model={"name": "ollama:tiny:v1", "backend": "hf"},
                          data={"chat_template": "auto"}, train={"max_steps": 8},
                          merge={"enabled": True, "verify": False}, export={"enabled": True, "quant": ["q8_0"]})
    monkeypatch.setenv("OLLAMA_MODELS", str(store))  # inherited by the CLI subprocess
    done = run_cli("train", str(recipe))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "ollama"
    status = json.loads((run / "run.json").read_text())
    assert status["base_source"]["ollama"]["name"] == "tiny:v1"
    assert status["base_source"]["sha256"] == sha256(tiny_ggufs["f32"])
    modelfile = (run / "gguf" / "Modelfile").read_text()
    assert "FROM ./ollama-q8_0.gguf" in modelfile and "<|im_start|>assistant" in modelfile
    report = json.loads((run / "gguf" / "export_report.json").read_text())
    assert report["exports"]["q8_0"]["verification"]["passed"], report["exports"]["q8_0"]["verification"]
    # The file the Modelfile names loads in llama.cpp and runs its chat template (8 steps teach a random model
    # nothing worth asserting on; the real-model test checks answers).
    from qlora_kit.native.loader import load

    named = run / "gguf" / modelfile.splitlines()[0].split("./", 1)[1]
    llm = load(named, n_ctx=256)
    try:
        assert llm.n_vocab() == 512 and "<|im_start|>" in llm.metadata["tokenizer.chat_template"]
        reply = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0.0)
        assert reply["usage"]["completion_tokens"] >= 1
    finally:
        llm.close()
