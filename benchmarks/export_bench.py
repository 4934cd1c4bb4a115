"""GGUF export seconds and peak RSS, each in a fresh process; optionally beside llama.cpp's own converter.

    .venv/bin/python benchmarks/export_bench.py [--model DIR] [--quant f32,f16,q8_0,q4_k_m] [--verify]
    .venv/bin/python benchmarks/export_bench.py --large-vocab --llama-cpp SDIST [--repeats 3]

Without --model, builds a random Llama (9 layers, hidden 1024, intermediate 2816, vocab = the tiny tokenizer's,
about 100M params) with qlora-kit's tiny byte-level BPE tokenizer. Peak RSS is the export process's own VmHWM.

--large-vocab builds a random bf16 Qwen2 (10 layers, hidden 1024, intermediate 2816, 424M params, 3 shards) with
Qwen's real 151,936-token tokenizer, rebuilt by transformers from `ggml-vocab-qwen2.gguf` in the llama-cpp-python
source distribution (SDIST: its unpacked directory or the .tar.gz, e.g. from
`pip download --no-deps --no-binary=:all: llama-cpp-python==0.3.36`). With --llama-cpp SDIST it then runs, 3 times
each, alternating: an import-only process, `export --quant f16 --no-verify`, llama.cpp's
`convert_hf_to_gguf.py --outtype f16` (with the sdist's own gguf-py), `export --quant q4_k_m --no-verify`,
llama.cpp's `llama_model_quantize` to Q4_K_M from a bf16 GGUF of the model (the step qlora-kit's K-quants used
to go through, timed alone), and `export --quant q8_0` with verification
(--allow-mismatch: a random model's near-tie logits may fail Q8_0's top-1 limit; the time and memory are what is
measured here); prints medians and a table projected to Llama 3.2 1B / 3B and Llama 3.1 8B shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = r"""
import os, sys, time, json
import torch, transformers, gguf, llama_cpp  # the fixed cost every export pays
from qlora_kit.runtime.memory import peak_rss_bytes
t0 = time.time()
if sys.argv[1:2] == ["--llama-cpp"]:  # llama.cpp's converter script, run in this process (its gguf-py on the path)
    import os, runpy
    sys.argv = sys.argv[2:]
    sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python convert_hf_to_gguf.py` would have it
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
elif sys.argv[1:2] == ["--llama-quantize"]:  # llama.cpp's own quantizer on a GGUF (qlora-kit's K-quant path before)
    import ctypes
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(sys.argv[4]), 0
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)  # its per-tensor log
    code = llama_cpp.llama_model_quantize(sys.argv[2].encode(), sys.argv[3].encode(), ctypes.byref(params))
else:
    from qlora_kit.cli import main
    code = main(sys.argv[1:]) if sys.argv[1:] else 0  # no arguments: the import-only baseline
print(json.dumps({"code": code, "seconds": time.time() - t0, "peak": peak_rss_bytes()}))
"""
# Published shapes (config.json) of the models the projection names.
SHAPES = {
    "Llama 3.2 1B": dict(vocab=128256, hidden=2048, inter=8192, layers=16, heads=32, kv=8, head_dim=64, tied=True),
    "Llama 3.2 3B": dict(vocab=128256, hidden=3072, inter=8192, layers=28, heads=24, kv=8, head_dim=128, tied=True),
    "Llama 3.1 8B": dict(vocab=128256, hidden=4096, inter=14336, layers=32, heads=32, kv=8, head_dim=128, tied=False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a Hugging Face model directory (default: build a random Llama)")
    ap.add_argument("--quant", default="f32,f16,q8_0,q4_k_m")
    ap.add_argument("--verify", action="store_true", help="include llama.cpp verification in the timing")
    ap.add_argument("--large-vocab", action="store_true", help="build the 424M Qwen2 with its real 152k vocabulary")
    ap.add_argument("--llama-cpp", metavar="SDIST", help="llama-cpp-python sdist (dir or .tar.gz): run its converter")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qlora-kit-export-bench-"))
    try:
        sdist = _unpack(Path(args.llama_cpp), root) if args.llama_cpp else None
        if args.large_vocab:
            if sdist is None:
                raise SystemExit("--large-vocab needs --llama-cpp SDIST (the Qwen tokenizer comes from it)")
            model = Path(args.model) if args.model else _build_qwen2(root, sdist)
            _compare(model, sdist, root, args.repeats)
        else:
            _per_type(Path(args.model) if args.model else _build(root), root, args.quant, args.verify)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(args: list[str], env: dict | None = None) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return {"code": result.returncode or 1, "error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def _per_type(model: Path, root: Path, quants: str, verify: bool) -> None:
    size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    print(f"model: {model} ({size / 2**20:,.0f} MiB safetensors); verification {'on' if verify else 'off'}\n")
    base = _run([])["peak"]
    print(f"import-only process peak RSS: {base / 2**20:,.0f} MiB\n")
    print("| type | seconds | peak RSS (MiB) | above imports (MiB) | file (MiB) |\n|---|---|---|---|---|")
    for quant in quants.split(","):
        out = root / f"gguf-{quant}"
        r = _run(["export", str(model), "--quant", quant, "--out", str(out)] + ([] if verify else ["--no-verify"]))
        if r["code"] != 0:  # e.g. verification refused the file (random models have near-tie logits)
            print(f"| {quant} | failed: {r.get('error', r['code'])} | | | |")
            continue
        file = next(out.glob("*.gguf"))
        print(f"| {quant} | {r['seconds']:.1f} | {r['peak'] / 2**20:,.0f} | {(r['peak'] - base) / 2**20:,.0f} | "
              f"{file.stat().st_size / 2**20:,.1f} |")


def _compare(model: Path, sdist: Path, root: Path, repeats: int) -> None:
    """Alternating runs of the four commands; medians of seconds and peak RSS."""
    vendor = sdist / "vendor" / "llama.cpp"
    config = json.loads((model / "config.json").read_text())
    size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    commands = {
        "import-only process (torch, transformers, gguf, llama_cpp)": ([], None),
        "`export --quant f16 --no-verify`": (["export", str(model), "--quant", "f16", "--no-verify", "--overwrite",
                                              "--out", str(root / "ours-f16")], None),
        "llama.cpp `convert_hf_to_gguf.py --outtype f16`": (
            ["--llama-cpp", str(vendor / "convert_hf_to_gguf.py"), str(model), "--outtype", "f16", "--outfile",
             str(root / "llama-cpp-f16.gguf")], {"PYTHONPATH": f"{vendor / 'gguf-py'}:{os.environ.get('PYTHONPATH', '')}"}),
        "`export --quant q4_k_m --no-verify`": (["export", str(model), "--quant", "q4_k_m", "--no-verify",
                                                 "--overwrite", "--out", str(root / "ours-q4km")], None),
        "llama.cpp `llama_model_quantize` Q4_K_M from our bf16 GGUF (the quantize step alone)": (
            ["--llama-quantize", str(root / "bf16.gguf"), str(root / "llama-cpp-q4km.gguf"), "15"], None),
        "`export --quant q8_0` (verification on, --allow-mismatch)": (
            ["export", str(model), "--quant", "q8_0", "--allow-mismatch", "--overwrite", "--out", str(root / "ours-q8")],
            None),
    }
    bf16 = _run(["export", str(model), "--quant", "bf16", "--no-verify", "--overwrite", "--out", str(root / "bf16")])
    if bf16["code"] != 0:
        raise SystemExit(f"bf16 export failed: {bf16.get('error')}")
    next((root / "bf16").glob("*.gguf")).rename(root / "bf16.gguf")  # what llama.cpp's quantizer starts from
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for i in range(repeats):
        for name, (cmd, env) in commands.items():
            r = _run(cmd, env)
            if r["code"] != 0:
                raise SystemExit(f"{name} failed: {r.get('error')}")
            runs[name].append(r)
            print(f"run {i + 1}: {name}: {r['seconds']:.1f} s, {r['peak'] / 2**20:,.0f} MiB", flush=True)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak")} for n, rs in runs.items()}
    base = med[next(iter(commands))]["peak"]
    q8 = next((root / "ours-q8").glob("*.gguf"))
    params = _params(model)
    print(f"\nmodel: {model.name}: {params / 1e6:,.0f}M params, bf16, {size / 2**20:,.0f} MiB in "
          f"{len(list(model.glob('*.safetensors')))} shards, vocabulary {config['vocab_size']:,}; "
          f"{repeats} runs each, alternating; medians (all runs above)\n")
    print("| command | seconds | peak RSS (MiB) | above imports (MiB) | vs the model |\n|---|---|---|---|---|")
    for name, m in med.items():
        above = "" if m is med[next(iter(commands))] else f"{(m['peak'] - base) / 2**20:,.0f}"
        print(f"| {name} | {m['seconds']:.1f} | {m['peak'] / 2**20:,.0f} | {above} | {m['peak'] / size:.2f}x |")
    report = json.loads((root / "ours-q8" / "export_report.json").read_text())["exports"]["q8_0"]
    names = list(commands)
    _project(params, config, base, med[names[1]], med[names[2]], med[names[5]], q8.stat().st_size, report)


def _project(params: int, config: dict, base: float, ours: dict, theirs: dict, verify: dict, q8_bytes: int,
             report: dict) -> None:
    """Seconds scale with the elements converted; our conversion's memory above imports does not scale with the
    model (row blocks + the tokenizer, whose vocabulary is about the same size); verification is the larger of
    one float32 decoder layer and the Q8_0 file llama.cpp maps, plus the logits (vocabulary x probe tokens) and
    the rest measured here."""
    tokens = report["verification"]["logits"]["tokens"]
    fixed = verify["peak"] - base - _verify_terms(config["vocab_size"], tokens, _layer_elems(_shape_of(config)),
                                                  q8_bytes)
    print(f"\nProjected (seconds per element: ours {ours['seconds'] / params * 1e9:.1f} ns, llama.cpp's "
          f"{theirs['seconds'] / params * 1e9:.1f} ns; ours above imports {(ours['peak'] - base) / 2**20:,.0f} MiB "
          f"flat; verification: logits + max(one float32 layer, Q8_0 file) + {fixed / 2**20:,.0f} MiB measured rest)\n")
    print("| shape | params | ours f16 no-verify: s / peak RSS (GiB) | llama.cpp f16: s | ours q8_0 + verify: "
          "peak RSS (GiB) | target: imports + Q8_0 + 512 MiB (GiB) |\n|---|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        n = _shape_params(shape)
        q8 = n * q8_bytes / params
        peak_v = base + _verify_terms(shape["vocab"], tokens, _layer_elems(shape), q8) + fixed
        print(f"| {name} | {n / 1e9:.2f}B | {ours['seconds'] / params * n:,.0f} / {ours['peak'] / 2**30:.2f} | "
              f"{theirs['seconds'] / params * n:,.0f} | {peak_v / 2**30:.2f} | {(base + q8 + 2**29) / 2**30:.2f} |")


def _verify_terms(vocab: int, tokens: int, layer_elems: int, gguf_bytes: float) -> float:
    """The reference logits (held throughout) + the larger of the two passes, which run one after the other:
    the HF reference (one float32 decoder layer) and llama.cpp (the mapped GGUF and its logits: our copy,
    llama-cpp-python's array and llama.cpp's own buffer)."""
    return 4 * tokens * vocab + max(4 * layer_elems, gguf_bytes + 4 * vocab * 3 * tokens)


def _shape_of(config: dict) -> dict:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    return dict(vocab=config["vocab_size"], hidden=hidden, inter=config["intermediate_size"],
                layers=config["num_hidden_layers"], heads=heads, kv=config.get("num_key_value_heads") or heads,
                head_dim=config.get("head_dim") or hidden // heads, tied=config.get("tie_word_embeddings", False))


def _layer_elems(s: dict) -> int:
    return s["hidden"] * s["head_dim"] * (2 * s["heads"] + 2 * s["kv"]) + 3 * s["hidden"] * s["inter"]


def _shape_params(s: dict) -> int:
    return s["layers"] * _layer_elems(s) + s["vocab"] * s["hidden"] * (1 if s["tied"] else 2)


def _params(model: Path) -> int:
    from qlora_kit.merging.checkpoint import Checkpoint

    ckpt = Checkpoint(model)
    total = 0
    for name in ckpt.names():
        n = 1
        for d in ckpt.shape(name):
            n *= d
        total += n
    return total


def _unpack(path: Path, root: Path) -> Path:
    if path.is_dir():
        return path
    with tarfile.open(path) as tar:
        tar.extractall(root / "sdist", filter="data")
    return next((root / "sdist").iterdir())


def _build_qwen2(root: Path, sdist: Path) -> Path:
    """Random bf16 Qwen2, 424M params, with Qwen's real tokenizer (from the sdist's vocabulary-only GGUF)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = root / "qwen2-424m"
    tokenizer = AutoTokenizer.from_pretrained(sdist / "vendor" / "llama.cpp" / "models",
                                              gguf_file="ggml-vocab-qwen2.gguf")
    config = Qwen2Config(vocab_size=151936, hidden_size=1024, intermediate_size=2816, num_hidden_layers=10,
                         num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=False,
                         max_position_embeddings=4096, bos_token_id=151643, eos_token_id=151645, dtype="bfloat16")
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(out, max_shard_size="300MB")
    tokenizer.save_pretrained(out)
    return out


def _build(root: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from _models import random_llama

    from qlora_kit.model.builtin import materialize

    tokenizer = materialize("builtin:tiny-llama")
    vocab = json.loads((tokenizer / "config.json").read_text())["vocab_size"]
    random_llama(root / "model", 9, 1024, 2816, vocab=vocab, tokenizer_from=tokenizer)
    return root / "model"


if __name__ == "__main__":
    main()
