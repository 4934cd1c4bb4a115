"""GGUF export through the real CLI, verified by llama.cpp (llama-cpp-python) on CPU: every supported architecture
as a tiny random model, direct types and K-quants, K-quant fallback reporting, the Modelfile, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_cli, run_cli_here, write_recipe

pytestmark = pytest.mark.slow

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
TOKENIZERS = Path(__file__).parent / "assets" / "tokenizers"  # family tokenizers: see tests/assets/tokenizers/README.md


def make_model(root, tiny_model_dir, kind: str, hidden: int = 256, intermediate: int = 512, layers: int = 2,
               **overrides):
    """A small random model of one architecture, using the tokenizer in `tiny_model_dir` (`overrides`: config)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
                  pad_token_id=0)
    gemma = {"head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": 128, "tie_word_embeddings": True}
    extra = {"llama": {}, "mistral": {}, "qwen2": {}, "qwen3": {"head_dim": 128}, "phi3": {},
             "mistral_nemo": {"head_dim": 128},
             "gemma2": {**gemma, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
             "gemma3_text": {**gemma},
             "llama31": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}}[kind]
    model_type = {"llama31": "llama", "mistral_nemo": "mistral"}.get(kind, kind)
    config = AutoConfig.for_model(model_type, **{**common, **extra, **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random norms and biases, so mishandled ones show up in the logits
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn_like(param))
        # Random init gives nearly flat next-token distributions, where any rounding flips near-ties and top-1
        # agreement measures luck (scaling the head would not help: it scales gaps and errors alike). A trained
        # model has a clear favourite; give this one too: a head equal to the input embeddings makes each
        # position's own token the argmax by a wide margin (with embeddings large enough to dominate the residual
        # stream), so top-1 agreement measures the conversion.
        model.get_input_embeddings().weight.mul_(5.0)  # std 0.1: the token dominates the residual stream
        if not config.tie_word_embeddings:
            model.lm_head.weight.copy_(model.get_input_embeddings().weight)
    out = root / kind
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tiny_model_dir / name).is_file():
            shutil.copy2(tiny_model_dir / name, out / name)
    return out


# (architecture, family tokenizer, GGUF tokenizer expected). Real families' tokenizer structure, small vocabularies.
FAMILIES = [("llama", "llama3", "gpt2/llama-bpe"), ("llama31", "llama3-gguf", "gpt2/gpt-2"),
            ("mistral", "llama2", "llama/default"), ("mistral_nemo", "tekken", "gpt2/tekken"),
            ("qwen2", "qwen2", "gpt2/qwen2"), ("qwen3", "qwen2", "gpt2/qwen2"), ("gemma2", "gemma2", "llama/default"),
            ("gemma3_text", "gemma3", "llama/default"), ("phi3", "phi3", "llama/default")]


@pytest.mark.parametrize("kind, family, expected", FAMILIES, ids=[f"{k}-{f}" for k, f, _ in FAMILIES])
def test_every_family_exports_and_llama_cpp_agrees(tmp_path, kind, family, expected):
    """A tiny random model of each family with that family's tokenizer, saved as transformers 5 saves it
    (tokenizer.json only), exports with default settings and passes the verifier: every file tokenizes the whole
    probe set (llama.cpp's own test strings, every byte, invalid UTF-8, ...) in a child process without aborting and
    as HF does. llama31-llama3-gguf is the Llama-3 hybrid (byte-level BPE whose tokenizer.json sets byte_fallback)
    for which llama.cpp's own converter writes a file llama.cpp aborts on."""
    from gguf import GGUFReader

    model = make_model(tmp_path, TOKENIZERS / family, kind)
    result = run_cli("export", str(model), "--quant", "f32,f16,q8_0,q4_k_m", "--out", str(tmp_path / "gguf"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gguf" / "export_report.json").read_text())
    for quant in ("f32", "f16", "q8_0", "q4_k_m"):
        entry = report["exports"][quant]
        check = entry["verification"]
        assert check["passed"], (quant, check["summary"])
        assert check["tokens"]["equal"] == check["tokens"]["texts"] >= 340 and "crash" not in check["tokens"]
        assert check["tokens"]["special_tokens_added_equal"]
        assert (tmp_path / "gguf" / entry["file"]).is_file()
    f32 = report["exports"]["f32"]
    assert f"{f32['tokenizer'].split()[0]}/{f32['pre_tokenizer']}" == expected
    assert f32["verification"]["logits"]["max_abs_logit_diff"] <= 1e-2
    assert report["exports"]["q8_0"]["verification"]["logits"]["rel_rms_error"] <= 0.06
    assert report["exports"]["q4_k_m"]["fallbacks"] == []  # every row width is a multiple of 256
    arch = {"llama31": "llama", "mistral": "llama", "mistral_nemo": "llama", "gemma3_text": "gemma3"}.get(kind, kind)
    assert f32["architecture"] == arch
    assert not list((tmp_path / "gguf").glob("*.tmp")) and not list((tmp_path / "gguf").glob(".*intermediate*"))
    reader = GGUFReader(str(tmp_path / "gguf" / f32["file"]))
    keys = set(reader.fields)
    missing = set(REQUIRED_KEYS[arch].format(arch=arch).split()) - keys
    assert not missing, missing
    assert {"tokenizer.ggml.scores" if expected.startswith("llama") else "tokenizer.ggml.merges"} <= keys
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model)
    adds_bos = hf("x")["input_ids"][0] == hf.bos_token_id
    assert reader.get_field("tokenizer.ggml.add_bos_token").contents() == adds_bos
    if kind == "llama31":
        assert "rope_freqs.weight" in [t.name for t in reader.tensors]


# Every key llama.cpp's own converter (conversion/*.py in llama-cpp-python 0.3.36's vendored llama.cpp) writes for
# these families, but the optional general.* descriptors it takes from a model card.
COMMON_KEYS = ("general.architecture general.type general.name general.file_type general.quantization_version "
               "{arch}.block_count {arch}.context_length {arch}.embedding_length {arch}.feed_forward_length "
               "{arch}.attention.head_count {arch}.attention.head_count_kv {arch}.attention.layer_norm_rms_epsilon "
               "{arch}.attention.key_length {arch}.attention.value_length "
               "tokenizer.ggml.model tokenizer.ggml.pre tokenizer.ggml.tokens tokenizer.ggml.token_type "
               "tokenizer.ggml.eos_token_id tokenizer.ggml.add_bos_token tokenizer.ggml.add_eos_token "
               "tokenizer.chat_template")
REQUIRED_KEYS = {
    "llama": COMMON_KEYS + " {arch}.rope.freq_base {arch}.vocab_size {arch}.rope.dimension_count",
    "qwen2": COMMON_KEYS + " {arch}.rope.freq_base", "qwen3": COMMON_KEYS + " {arch}.rope.freq_base",
    "gemma2": COMMON_KEYS + " {arch}.attn_logit_softcapping {arch}.final_logit_softcapping "
                            "{arch}.attention.sliding_window tokenizer.ggml.add_space_prefix",
    "gemma3": COMMON_KEYS + " {arch}.rope.freq_base {arch}.attention.sliding_window tokenizer.ggml.add_space_prefix",
    "phi3": COMMON_KEYS + " {arch}.rope.freq_base {arch}.rope.dimension_count {arch}.attention.sliding_window "
                          "{arch}.rope.scaling.original_context_length",
}


def test_k_quant_fallback_is_reported(tiny_model_dir, tmp_path):
    model = make_model(tmp_path, tiny_model_dir, "llama", hidden=320, intermediate=640)
    result = run_cli("export", str(model), "--quant", "q4_k_m", "--out", str(tmp_path / "gguf"))
    assert result.returncode == 0, result.stderr[-3000:]
    entry = json.loads((tmp_path / "gguf" / "export_report.json").read_text())["exports"]["q4_k_m"]
    assert entry["fallbacks"], "rows 320/640 wide cannot use 256-value K-quant blocks"
    assert all(f["row_width"] % 256 for f in entry["fallbacks"])
    assert all(not f["type"].endswith("_K") for f in entry["fallbacks"])


def test_export_refuses_bad_input(tiny_model_dir, tmp_path, capsys):
    """In process (run_cli_here): ten refusals and an overwrite check, each the CLI's exit code and message."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = str(tmp_path / "gguf")
    result = run_cli_here(capsys, "export", str(tiny_model_dir), "--quant", "q4_k_m,iq2_xxs", "--out", out)
    assert result.returncode == 2 and "--quant: 'iq2_xxs' needs an importance matrix (imatrix)" in result.stderr
    result = run_cli_here(capsys, "export", str(tiny_model_dir), "--quant", "q9_9", "--out", out)
    assert result.returncode == 2
    assert result.stderr.strip() == ("qlora-kit: error: --quant: 'q9_9' is not one of: f32, f16, bf16, q8_0, "
                                     "q4_0, q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k")

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant,
                                         device_map={"": "cpu"}).save_pretrained(tmp_path / "bnb")
    result = run_cli_here(capsys, "export", str(tmp_path / "bnb"), "--out", out)
    assert result.returncode == 2 and "merge into 16-bit weights first: qlora-kit merge RUN_DIR" in result.stderr

    no_tok = tmp_path / "no-tok"
    shutil.copytree(tiny_model_dir, no_tok)
    (no_tok / "tokenizer.json").unlink()
    result = run_cli_here(capsys, "export", str(no_tok), "--out", out, "--no-verify")
    assert result.returncode == 2 and f"{no_tok}: missing tokenizer.json" in result.stderr

    broken = tmp_path / "broken-tok"  # cut off mid-file, as an interrupted copy leaves it
    shutil.copytree(tiny_model_dir, broken)
    text = (broken / "tokenizer.json").read_text()
    (broken / "tokenizer.json").write_text(text[: len(text) // 2])
    result = run_cli_here(capsys, "export", str(broken), "--out", out, "--no-verify")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"qlora-kit: error: {broken / 'tokenizer.json'}: not valid JSON (")
    assert not list((tmp_path / "gguf").glob("broken-tok*"))

    other = tmp_path / "other-arch"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["FalconForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    result = run_cli_here(capsys, "export", str(other), "--out", out, "--no-verify")
    assert result.returncode == 2
    assert "architecture FalconForCausalLM is not supported for GGUF export; supported: LlamaForCausalLM, " \
           "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, " \
           "Phi3ForCausalLM" in result.stderr

    odd = tmp_path / "odd-pre"
    shutil.copytree(tiny_model_dir, odd)
    data = json.loads((odd / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "Whitespace"}
    (odd / "tokenizer.json").write_text(json.dumps(data))
    result = run_cli_here(capsys, "export", str(odd), "--out", out, "--no-verify")
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "no llama.cpp tokenizer reproduces this tokenizer (tried gpt2/llama-bpe, gpt2/qwen2" in line
    assert "differs first on '" in line and "HF ids [" in line and "llama.cpp ids [" in line

    wordpiece = tmp_path / "wordpiece"
    shutil.copytree(tiny_model_dir, wordpiece)
    data = json.loads((wordpiece / "tokenizer.json").read_text())
    data["model"] = {"type": "WordPiece", "unk_token": "<|pad|>", "continuing_subword_prefix": "##",
                     "max_input_chars_per_word": 100, "vocab": data["model"]["vocab"]}
    (wordpiece / "tokenizer.json").write_text(json.dumps(data))
    result = run_cli_here(capsys, "export", str(wordpiece), "--out", out, "--no-verify")
    assert result.returncode == 2 and "tokenizer type WordPiece is not supported for GGUF export; supported: " \
        "byte-level BPE" in result.stderr, result.stderr[-2000:]

    small = tmp_path / "small-embedding"  # the tokenizer has more ids than the embedding has rows
    shutil.copytree(tiny_model_dir, small)
    data = json.loads((small / "tokenizer.json").read_text())
    data["added_tokens"].append({"id": 512, "content": "<|extra|>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    (small / "tokenizer.json").write_text(json.dumps(data))
    result = run_cli_here(capsys, "export", str(small), "--out", out, "--no-verify")
    assert result.returncode == 2
    assert "the tokenizer has token ids up to 512 ('<|extra|>') but the model's embedding has 512 rows" \
        in result.stderr, result.stderr[-2000:]
    assert not list((tmp_path / "gguf").glob("*.gguf*")), "nothing half-written left behind"

    assert run_cli_here(capsys, "export", str(tiny_model_dir), "--quant", "f16", "--out", out,
                        "--no-verify").returncode == 0
    result = run_cli_here(capsys, "export", str(tiny_model_dir), "--quant", "f16", "--out", out, "--no-verify")
    assert result.returncode == 2 and "already exists; pass --overwrite to replace it" in result.stderr
    assert run_cli_here(capsys, "export", str(tiny_model_dir), "--quant", "f16", "--out", out, "--no-verify",
                        "--overwrite").returncode == 0


def test_run_without_a_merge_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "complete"}))
    result = run_cli("export", str(run))
    assert result.returncode == 2
    assert result.stderr.strip() == f"qlora-kit: error: {run}: no merged model to export; merge it first: " \
                                    f"qlora-kit merge {run}"


def test_export_of_a_finished_run_keeps_run_end_last_and_a_refusal_appends_nothing(tiny_model_dir, tmp_path,
                                                                                    capsys):
    """A finished run's log ends with `run_end`. An export run on it later (here with --out elsewhere) appends its
    events and a `run_end` of its own; refusals before any work (a bad --quant, an existing file) append nothing."""
    from qlora_kit.eventlog import EventLog

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "merged")
    (run / "run.json").write_text(json.dumps({"status": "complete", "run_id": "r1"}))
    write_recipe(run / "recipe.yaml")
    log = EventLog()
    log.attach(run / "events.jsonl", "r1")
    log.emit("run_start", run_dir=str(run), backend="hf", device="cpu")
    log.emit("run_end", status="complete")
    out = str(tmp_path / "elsewhere")

    before = (run / "events.jsonl").read_bytes()
    assert run_cli_here(capsys, "export", str(run), "--quant", "q9_9", "--out", out).returncode == 2
    assert (run / "events.jsonl").read_bytes() == before
    assert run_cli_here(capsys, "export", str(run), "--quant", "f16", "--out", out, "--no-verify").returncode == 0
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)) and {e["run_id"] for e in events} == {"r1"}
    assert [(e["event"], e.get("name") or e.get("kind") or e.get("status")) for e in events] == [
        ("run_start", None), ("run_end", "complete"), ("stage", "export"), ("stage", "export"), ("artifact", "gguf"),
        ("artifact", "modelfile"), ("artifact", "export_report"), ("run_end", "complete")]
    before = (run / "events.jsonl").read_bytes()
    result = run_cli_here(capsys, "export", str(run), "--quant", "f16", "--out", out, "--no-verify")
    assert result.returncode == 2 and "already exists; pass --overwrite to replace it" in result.stderr
    assert (run / "events.jsonl").read_bytes() == before


def test_verification_catches_a_wrong_conversion(tiny_model_dir, tmp_path, monkeypatch):
    """Without the Q/K un-permute (the classic Llama converter bug) llama.cpp computes different attention; the F32
    check must fail the export and leave no .gguf behind."""
    import dataclasses

    from qlora_kit.errors import StageError
    from qlora_kit.gguf.run import ExportOptions, export
    from qlora_kit.gguf.tensors import archs

    model = make_model(tmp_path, tiny_model_dir, "llama")
    broken = dataclasses.replace(archs.ARCHS["LlamaForCausalLM"], permute_qk=False)
    monkeypatch.setitem(archs.ARCHS, "LlamaForCausalLM", broken)
    with pytest.raises(StageError, match=r"verification failed for f32: max_abs_logit_diff 0\.\d+ \(outside the limit"):
        export(model, ExportOptions(quant=["f32"]), tmp_path / "gguf")
    with pytest.raises(StageError, match=r"verification failed for bf16: relative logit error 0\.0\d+ \(outside"):
        export(model, ExportOptions(quant=["bf16"]), tmp_path / "gguf")
    # Within a 4-bit type's allowed error, but the F32 conversion the K-quant is quantized from is checked first.
    with pytest.raises(StageError, match=r"verification failed for the f32 conversion the K-quants are quantized "
                                         r"from: max_abs_logit_diff 0\.\d+ \(outside"):
        export(model, ExportOptions(quant=["q4_k_m"]), tmp_path / "gguf")
    assert not list((tmp_path / "gguf").glob("*.gguf*"))


def test_gemma_norms_without_the_plus_one_are_refused_at_q8_0(tmp_path, monkeypatch):
    import dataclasses

    from qlora_kit.errors import StageError
    from qlora_kit.gguf.run import ExportOptions, export
    from qlora_kit.gguf.tensors import archs

    model = make_model(tmp_path, TOKENIZERS / "gemma2", "gemma2")
    monkeypatch.setitem(archs.ARCHS, "Gemma2ForCausalLM",
                        dataclasses.replace(archs.ARCHS["Gemma2ForCausalLM"], norm_shift=0.0))
    with pytest.raises(StageError, match=r"verification failed for q8_0: relative logit error 0\.[3-9]\d* \(outside"):
        export(model, ExportOptions(quant=["q8_0"]), tmp_path / "gguf")
    assert not list((tmp_path / "gguf").glob("*.gguf*"))


@pytest.mark.parametrize("damage", ["wrong_pre", "shifted_vocab"])
def test_check_only_refuses_a_gguf_with_a_wrong_tokenizer(tmp_path, monkeypatch, damage):
    """A GGUF made elsewhere with a wrong tokenizer.ggml.pre (Qwen 2's single digits for Llama 3's 1-3) or a vocab
    shifted by one id: `export --check-only` runs the verifier on it and refuses it (exit 1, one line); the same
    check passes the file we write."""
    from qlora_kit.gguf.run import ExportOptions, export
    from qlora_kit.gguf.vocab import tokenizer_probe

    model = make_model(tmp_path, TOKENIZERS / "llama3", "llama")
    good = export(model, ExportOptions(quant=["q8_0"], verify=False), tmp_path / "good") / "llama-q8_0.gguf"
    result = run_cli("export", "--check-only", str(good), str(model))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout[:result.stdout.rindex("}") + 1])["quant"] == "q8_0"

    real_choose = tokenizer_probe.choose

    def damaged(*args, **kwargs):
        plan, probe = real_choose(*args, **kwargs)
        if damage == "wrong_pre":
            plan.pre = "qwen2"
        else:
            plan.tokens = plan.tokens[1:] + plan.tokens[:1]
        return plan, probe

    monkeypatch.setattr(tokenizer_probe, "choose", damaged)
    bad = export(model, ExportOptions(quant=["q8_0"], verify=False), tmp_path / "bad") / "llama-q8_0.gguf"
    result = run_cli("export", "--check-only", str(bad), str(model))
    assert result.returncode == 1, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert f"{bad}: verification failed (q8_0): llama.cpp tokenizes" in line and "differently from the HF" in line


@pytest.fixture(scope="module")
def chat_gguf(tmp_path_factory):
    """The tiny model with a ChatML template, exported to Q8_0."""
    from qlora_kit.data.templates import CHAT_TEMPLATES
    from qlora_kit.model.builtin import materialize

    root = tmp_path_factory.mktemp("chat")
    shutil.copytree(materialize("builtin:tiny-llama"), root / "model")
    (root / "model" / "chat_template.jinja").write_text(CHAT_TEMPLATES["chatml"].jinja)
    # Untrained, this model's next-token distributions are flat (near-ties), so Q8_0's top-1 check is luck here;
    # conversion correctness is tested above on peaked models. These tests are about chat and serve.
    result = run_cli("export", str(root / "model"), "--quant", "q8_0", "--out", str(root / "gguf"), "--no-verify")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "gguf" / "model-q8_0.gguf"


def test_chat_runs_one_prompt_and_refuses_a_missing_file(chat_gguf):
    # Untrained weights: the reply is arbitrary (possibly empty); the trained demo's answer is checked in
    # tests/test_train.py.
    result = run_cli("chat", str(chat_gguf), "--prompt", "What is the capital of Peru?", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("chat", str(chat_gguf.parent / "missing.gguf"), "--prompt", "hi")
    assert result.returncode == 2 and "missing.gguf: no such file" in result.stderr


def test_serve_answers_an_openai_chat_completion_on_loopback(chat_gguf):
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "qlora_kit", "serve", str(chat_gguf), "--port", str(port),
                             "--name", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:  # bounded: until the server answers, it exits, or two minutes pass
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() < deadline, "server did not start"
            try:
                models = json.load(urllib.request.urlopen(f"{base}/models", timeout=2))
                break
            except OSError:
                time.sleep(0.5)
        assert [m["id"] for m in models["data"]] == ["tiny"]
        body = json.dumps({"model": "tiny", "max_tokens": 8, "temperature": 0,
                           "messages": [{"role": "user", "content": "What is the capital of Peru?"}]}).encode()
        request = urllib.request.Request(f"{base}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        reply = json.load(urllib.request.urlopen(request, timeout=60))
        assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
        assert isinstance(reply["choices"][0]["message"]["content"], str)
        assert reply["usage"]["prompt_tokens"] > 5
        # A tool loop's second request, as OpenAI clients send it: the calling message has content null (once a
        # 500 from llama-cpp-python's schema), the result follows; the chat template renders tools.
        tools = [{"type": "function", "function": {"name": "add", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer"}}}}}]
        call = {"id": "call_0", "type": "function", "function": {"name": "add", "arguments": '{"a":1}'}}
        body = json.dumps({"model": "tiny", "max_tokens": 8, "temperature": 0, "tools": tools, "messages": [
            {"role": "user", "content": "Add 1"}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": "1"}]}).encode()
        request = urllib.request.Request(f"{base}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        reply = json.load(urllib.request.urlopen(request, timeout=60))
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert reply["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_not_enough_disk_is_refused_before_writing(tiny_model_dir, tmp_path, monkeypatch):
    """Only the free-space query is faked; the check runs before any file is created."""
    from qlora_kit.errors import UsageError
    from qlora_kit.gguf.run import ExportOptions, export
    from qlora_kit.gguf.tensors import resources

    real = shutil.disk_usage
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda p: real(p)._replace(free=100_000))
    with pytest.raises(UsageError, match=r"not enough disk space at .*: the export needs about 0\.\d\d GiB, 0\.00 GiB free"):
        export(tiny_model_dir, ExportOptions(quant=["f32", "q4_k_m"], verify=False), tmp_path / "gguf")
    assert not list((tmp_path / "gguf").glob("*.gguf*"))


def make_spm_tokenizer(root, dummy_prefix: bool, cls: str):
    """A real SentencePiece BPE model (byte fallback) trained on the shipped chat data, loaded by transformers."""
    import sentencepiece as spm

    from qlora_kit.model.builtin import tiny_corpus

    root.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus()), model_prefix=str(root / "sp"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        add_dummy_prefix=dummy_prefix, minloglevel=2)
    (root / "sp.model").rename(root / "tokenizer.model")
    (root / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": cls, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "pad_token": "<pad>", "add_bos_token": True, "legacy": False}))
    return root


@pytest.mark.parametrize("kind, dummy_prefix, cls", [("llama", True, "LlamaTokenizer"),
                                                      ("gemma2", False, "GemmaTokenizer"),
                                                      ("phi3", True, "LlamaTokenizer")])
def test_sentencepiece_tokenizers_export_from_tokenizer_model(tmp_path, kind, dummy_prefix, cls):
    from transformers import AutoTokenizer

    tok_dir = make_spm_tokenizer(tmp_path / "tok", dummy_prefix, cls)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    # A token added on top of the SentencePiece vocabulary (Phi-3's tokenizer has this one; llama.cpp requires it
    # for phi3), so the added-token path is exercised for every family.
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    tokenizer.save_pretrained(tok_dir)  # writes tokenizer.json; transformers keeps no tokenizer.model
    model = make_model(tmp_path, tok_dir, kind)
    shutil.copy2(tok_dir / "tokenizer.model", model / "tokenizer.model")
    result = run_cli("export", str(model), "--quant", "f32,q8_0", "--out", str(tmp_path / "gguf"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gguf" / "export_report.json").read_text())
    f32 = report["exports"]["f32"]
    assert f32["tokenizer"] == "llama (sentencepiece)" and f32["tokenizer_source"] == "tokenizer.model (SentencePiece)"
    assert f32["verification"]["tokens"]["equal"] == f32["verification"]["tokens"]["texts"]
    assert f32["verification"]["passed"] and report["exports"]["q8_0"]["verification"]["passed"]
    from_model = f32["verification"]["tokens"]
    # Without tokenizer.model (as transformers 5 saves it) the vocabulary is built from tokenizer.json, its scores
    # from the merge ranks: llama.cpp must tokenize exactly as with SentencePiece's own scores.
    (model / "tokenizer.model").unlink()
    result = run_cli("export", str(model), "--quant", "f32", "--out", str(tmp_path / "gguf2"))
    assert result.returncode == 0, result.stderr[-3000:]
    f32 = json.loads((tmp_path / "gguf2" / "export_report.json").read_text())["exports"]["f32"]
    assert f32["tokenizer_source"] == "tokenizer.json (BPE, scores from merge ranks)"
    assert f32["add_space_prefix"] == dummy_prefix
    assert f32["verification"]["passed"], f32["verification"]["summary"]
    assert f32["verification"]["tokens"] == from_model


def _bpe_tokenizer(root, regex: str):
    """A byte-level BPE tokenizer split by `regex`, trained on the shipped chat data plus numbers (multi-digit
    merges are where the Llama 3 and Qwen 2 patterns differ: 1-3 digits vs single digits)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from qlora_kit.model.builtin import TINY_SPECIAL_TOKENS, tiny_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    numbers = [" ".join(str(i) for i in range(2000))] * 5
    tok.train_from_iterator(tiny_corpus() + numbers, trainers.BpeTrainer(
        vocab_size=1200, special_tokens=TINY_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                            pad_token="<|pad|>").save_pretrained(root)
    return root


@pytest.mark.parametrize("regex_name, kind, expected", [
    ("LLAMA3_REGEX", "llama", "llama-bpe"),
    ("QWEN2_REGEX", "llama", "qwen2"),
    # transformers 5 loads a qwen2 model's tokenizer as Qwen2Tokenizer, which applies Qwen 2's own pattern
    # whatever tokenizer.json says: export must name the pattern transformers really uses.
    ("LLAMA3_REGEX", "qwen2", "qwen2"),
])
def test_pre_tokenizer_is_identified_as_transformers_applies_it(tmp_path, regex_name, kind, expected):
    from transformers import AutoTokenizer

    from qlora_kit.gguf.vocab import vocab

    model = make_model(tmp_path, _bpe_tokenizer(tmp_path / "tok", getattr(vocab, regex_name)), kind)
    digits = AutoTokenizer.from_pretrained(model).tokenize("12345")
    assert digits == (["123", "45"] if expected == "llama-bpe" else list("12345"))  # the patterns do differ here
    result = run_cli("export", str(model), "--quant", "f32", "--out", str(tmp_path / "gguf"))
    assert result.returncode == 0, result.stderr[-3000:]
    f32 = json.loads((tmp_path / "gguf" / "export_report.json").read_text())["exports"]["f32"]
    assert f32["pre_tokenizer"] == expected
    assert f32["verification"]["tokens"]["equal"] == f32["verification"]["tokens"]["texts"], f32["verification"]


MEASURE = """
import sys
import torch, transformers, gguf, llama_cpp  # the fixed cost every export pays
from qlora_kit.cli import main
from qlora_kit.runtime.memory import peak_rss_bytes
code = main(sys.argv[1:])
print("PEAK", peak_rss_bytes())
sys.exit(code)
"""


def test_export_memory_does_not_grow_with_model_size(tiny_model_dir, tmp_path):
    """Converting a ~540 MiB model must peak about where converting the 6 MiB tiny model does (same code path and
    imports): only the largest tensor may add to it, never the model."""
    import subprocess
    import sys

    from conftest import ROOT

    big = make_model(tmp_path, tiny_model_dir, "llama", hidden=1024, intermediate=2816, layers=12)
    big_bytes = sum(f.stat().st_size for f in big.glob("*.safetensors"))

    def peak(model, out):
        result = subprocess.run([sys.executable, "-c", MEASURE, "export", str(model), "--quant", "f32", "--out",
                                 str(out), "--no-verify"], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        return int(result.stdout.split("PEAK")[-1])

    small = peak(tiny_model_dir, tmp_path / "small-out")
    large = peak(big, tmp_path / "big-out")
    print(f"export peak RSS: {small / 2**20:.0f} MiB (tiny model), {large / 2**20:.0f} MiB ({big_bytes / 2**20:.0f} MiB)")
    bound = 64 * 2**20
    assert big_bytes > 5 * bound
    assert large - small < bound, (large - small) / 2**20


def test_probe_rows_are_cut_so_logit_memory_does_not_grow_with_max_seq_length(tiny_model_dir, tmp_path):
    """Every probe position's logits are held (x vocabulary): a run's long held-out rows are cut to PROBE_TOKENS
    tokens for the check, keeping their beginning token for token."""
    from transformers import AutoTokenizer

    from conftest import write_jsonl, write_recipe
    from qlora_kit.data.encode import apply_chat_template_choice
    from qlora_kit.data.held_out import held_out_rows
    from qlora_kit.gguf.run import PROBE_TOKENS, _held_out
    from qlora_kit.recipe import load_recipe

    story = " ".join(f"word{i}" for i in range(150))
    rows = [{"messages": [{"role": "user", "content": f"{i}: {story}"}, {"role": "assistant", "content": story}]}
            for i in range(30)]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    write_recipe(tmp_path / "recipe.yaml", model={"max_seq_length": 4096}, data={"path": str(data)})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    apply_chat_template_choice(tokenizer, "chatml")  # as the merged model's tokenizer carries it
    _, full = held_out_rows(load_recipe(tmp_path / "recipe.yaml"), tokenizer, 4)
    cut, source = _held_out(tiny_model_dir, tmp_path, tokenizer, 4)
    assert source == "training rows" and len(cut) == 4
    assert all(len(r.input_ids) > 3 * PROBE_TOKENS for r in full)
    assert [len(ids) for ids in cut] == [PROBE_TOKENS] * 4
    assert cut == [r.input_ids[:PROBE_TOKENS] for r in full]
