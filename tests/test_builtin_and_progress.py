"""The built-in tiny model is deterministic; progress output adapts to terminals."""

from __future__ import annotations

import hashlib
import io
import json

from qlora_kit.model import builtin
from qlora_kit.train.callbacks import Progress


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_llama_is_built_deterministically(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("QLORA_KIT_HOME", str(tmp_path))
    again = builtin.materialize("builtin:tiny-llama")
    assert again != tiny_model_dir
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(again / name) == _digest(tiny_model_dir / name), name
    config = json.loads((again / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("llama", 256, 2)
    assert not list(tmp_path.glob("builtin/.tiny-llama-*")), "no temporary build directory left behind"


def test_tiny_tokenizer_round_trips_and_has_chat_markers(tiny_tokenizer):
    text = "What is the capital of Peru? 123 ünïcödé 😀"
    assert tiny_tokenizer.decode(tiny_tokenizer(text)["input_ids"]) == text  # byte-level: nothing is lost
    for marker in ("<|im_start|>", "<|im_end|>"):
        assert len(tiny_tokenizer.encode(marker, add_special_tokens=False)) == 1


def test_progress_plain_lines_when_not_a_terminal():
    lines = []
    progress = Progress(lines.append, tty=False)
    progress.update(10, 100, 2.5, 1234.0, None)
    progress.update(20, 100, 2.25, None, 75.0)
    assert lines == ["step 10/100  loss 2.5000  tok/s 1,234  eta -", "step 20/100  loss 2.2500  tok/s -  eta 00:01:15"]


def test_progress_bar_on_a_terminal(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    progress = Progress(print, tty=True)
    progress.update(5, 50, 1.5, 900.0, None)
    progress.close()
    shown = err.getvalue()
    assert "5/50" in shown and "loss 1.5000, 900 tok/s" in shown and "<" in shown  # tqdm's ETA field
