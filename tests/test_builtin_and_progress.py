"""The built-in tiny model is deterministic; progress output adapts to terminals."""

from __future__ import annotations

import hashlib
import io
import json

from qlora_kit.model import builtin
from qlora_kit.training.callbacks import Progress


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


def test_metrics_describe_the_whole_run_across_a_crash_a_cancel_and_two_resumes(tmp_path):
    """Session 1 logs steps 2, 4, 6 (logging_steps 2) and crashes after its checkpoint at 4; session 2 resumes from
    checkpoint-4, redoes step 6 and is cancelled at step 9; session 3 resumes from checkpoint-9 and logs step 10."""
    from qlora_kit.events import make_event
    from qlora_kit.training.sessions import whole_run

    lines = [
        ("run_start", 100, {"run_dir": "r", "backend": "hf", "device": "cpu"}),
        ("stage", 110, {"name": "train", "status": "start"}),
        ("step", 120, {"step": 2, "loss": 6.0, "tokens_per_s": 100.0, "memory_bytes": 7}),
        ("step", 125, {"step": 4, "loss": 5.0, "memory_bytes": 9}),
        ("checkpoint", 126, {"step": 4, "path": "checkpoints/checkpoint-4"}),
        ("step", 130, {"step": 6, "loss": 9.9}),
        ("run_end", 150, {"status": "failed", "error": "killed"}),
        ("run_start", 200, {"run_dir": "r", "backend": "hf", "device": "cpu",
                            "resumed_from": "/x/r/checkpoints/checkpoint-4"}),
        ("stage", 210, {"name": "train", "status": "start"}),
        ("step", 220, {"step": 6, "loss": 4.0, "tokens_per_s": 200.0}),
        ("step", 230, {"step": 8, "loss": 3.0}),
        ("cancelled", 240, {"step": 9, "reason": "SIGINT", "checkpoint": "checkpoints/checkpoint-9"}),
        ("run_end", 241, {"status": "interrupted"}),
        ("run_start", 300, {"run_dir": "r", "backend": "hf", "device": "cpu",
                            "resumed_from": "/x/r/checkpoints/checkpoint-9"}),
        ("stage", 305, {"name": "train", "status": "start"}),
        ("step", 310, {"step": 10, "loss": 2.5}),
        ("stage", 317.5, {"name": "train", "status": "end", "seconds": 12.5}),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(make_event(kind, run_id="r1", seq=i, t=t, **fields,
                                       **({"max_steps": 10} if kind == "step" else {})).model_dump_json() + "\n"
                            for i, (kind, t, fields) in enumerate(lines, 1)))
    run = whole_run(path, train_seconds=12.5, wall=20.0)
    # Each logged loss weighs the steps it averages: 2, 2, 2 (from checkpoint-4), 2, 1 (from checkpoint-9);
    # session 1's step 6 was redone, so its 9.9 is gone.
    assert run["train_loss"] == (6.0 * 2 + 5.0 * 2 + 4.0 * 2 + 3.0 * 2 + 2.5 * 1) / 9
    assert (run["first_loss"], run["final_loss"]) == (6.0, 2.5)
    assert run["tokens_per_second"] == 150.0 and run["step_memory_bytes"] == 9
    assert run["train_seconds"] == 40 + 31 + 12.5  # sessions cut short: train start to their last event
    assert run["wall_seconds"] == 50 + 41 + 20.0
