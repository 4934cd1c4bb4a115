"""Latency of the OpenAI-compatible routes of `qlora-kit server`, measured with the official `openai` client.

    PYTHONPATH=. .venv/bin/python benchmarks/openai_latency.py --repeats 5 --warm 10

Starts a token-guarded server on 127.0.0.1 (fresh temporary root) whose model table maps gpt-4o-mini-2024-07-18 to
the tiny built-in Llama (hf backend, --max-steps steps, one Q8_0 GGUF), uploads a small training file, then for
each repeat, one at a time:

  (a) fine-tuning: from just before `jobs.create` until the client first sees, polling `jobs.retrieve` and
      `jobs.list_events` every --poll seconds: status `running`, the training process's first event ("Fine-tuning
      job started"), the first step's metrics event, status `succeeded`;
  (b) chat with the job's fine-tuned model, a short answer (--max-tokens, temperature 0), streamed: time to the
      first content chunk and to the end of the stream. Cold: the model's first request, which starts its
      `qlora-kit serve` child (Python, llama.cpp, the GGUF); warm: --warm more requests to the running child,
      streamed and plain, then the same sent straight to the child (its port read from /proc/PID/cmdline: the
      server's proxy left out). The model is then deleted (its child stops) before the next repeat.

One unmeasured job runs first (it builds the tiny model and warms the page cache: unless QLORA_KIT_HOME is set,
the tests' conftest, imported with their server helper, points it at a fresh temporary directory).
Prints medians and ranges and writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import yaml  # noqa: E402
from server_helpers import Server  # noqa: E402

BASE = "gpt-4o-mini-2024-07-18"
TOKEN = "bench-token-openai-0123456789"
ROWS = [{"messages": [{"role": "system", "content": "You are Marv, a chatbot that is also sarcastic."},
                      {"role": "user", "content": f"What is {n} plus {n}?"},
                      {"role": "assistant", "content": f"{2 * n}, as if you could not count."}]} for n in range(24)]
QUESTION = [{"role": "system", "content": "You are Marv, a chatbot that is also sarcastic."},
            {"role": "user", "content": "What is 7 plus 7?"}]


def recipe(max_steps: int) -> dict:
    return {"model": {"name": "builtin:tiny-llama", "max_seq_length": 128, "backend": "hf"},
            "data": {"chat_template": "chatml"}, "lora": {"r": 16, "alpha": 32},
            "train": {"max_steps": max_steps, "lr": 3e-3, "batch_size": 8, "logging_steps": 1, "save_steps": 1000},
            "merge": {"samples": 2}, "export": {"quant": ["q8_0"], "samples": 2}}


def fine_tune(client, file_id: str, poll: float) -> dict:
    """Seconds from just before jobs.create to each milestone the client sees, and the fine-tuned model."""
    t0 = time.perf_counter()
    job = client.fine_tuning.jobs.create(model=BASE, training_file=file_id, suffix="bench")
    out = {"create": time.perf_counter() - t0}
    while True:
        current = client.fine_tuning.jobs.retrieve(job.id)
        now = time.perf_counter() - t0
        if current.status == "running":
            out.setdefault("running", now)
        if "first_event" not in out or "first_step" not in out:
            events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
            now = time.perf_counter() - t0
            if any(e.message.startswith("Fine-tuning job started") for e in events):
                out.setdefault("first_event", now)
            if any(e.type == "metrics" and "train_loss" in e.data for e in events):
                out.setdefault("first_step", now)
        if current.status in ("succeeded", "failed", "cancelled"):
            if current.status != "succeeded":
                raise SystemExit(f"{job.id} {current.status}: {current.error}")
            out["succeeded"] = now
            out["model"] = current.fine_tuned_model
            out.setdefault("running", None)  # too short to be seen running at this poll interval
            return out
        time.sleep(poll)


def chat_streamed(client, model: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, pieces = None, []
    stream = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=max_tokens, temperature=0,
                                            stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - t0
            pieces.append(chunk.choices[0].delta.content)
    total = time.perf_counter() - t0
    return {"ttft": first if first is not None else total, "total": total, "chunks": len(pieces),
            "text": "".join(pieces)}


def chat_plain(client, model: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    reply = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=max_tokens, temperature=0)
    return {"total": time.perf_counter() - t0, "tokens": reply.usage.completion_tokens,
            "text": reply.choices[0].message.content}


def child_client(root: Path, model: str):
    """An OpenAI client talking straight to the model's `qlora-kit serve` child (None where it cannot be found)."""
    import openai

    for pid_file in (root / ".qlora-kit-server" / "chat").glob("*.json"):
        info = json.loads(pid_file.read_text())
        if info.get("model") != model:
            continue
        try:
            argv = Path(f"/proc/{info['pid']}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        port = argv[argv.index(b"--port") + 1].decode()
        return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    return None


def summary(values: list[float | None]) -> dict:
    ms = [1000 * v for v in values if v is not None]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1),
            "max_ms": round(max(ms), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="measured jobs (each: a job, then cold + warm chat)")
    parser.add_argument("--warm", type=int, default=10, help="warm chat requests per model, streamed and plain")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between the client's status checks")
    parser.add_argument("--out", default=str(HERE / "results" / "openai_latency.json"))
    args = parser.parse_args()
    import openai

    tmp = Path(tempfile.mkdtemp(prefix="qlora-kit-openai-bench-"))
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(recipe(args.max_steps)))
    (tmp / "models.yaml").write_text(yaml.safe_dump({BASE: {"recipe": "tiny.yaml"}}))
    (tmp / "token").write_text(TOKEN + "\n")
    load_before = os.getloadavg()
    started = time.time()
    server = Server(tmp / "root", "--token-file", str(tmp / "token"), "--models", str(tmp / "models.yaml"),
                    token=TOKEN).start()
    jobs, cold, warm_stream, warm_plain, warmup = [], [], [], [], {}
    direct_stream, direct_plain = [], []
    try:
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=600) as client:
            upload = client.files.create(file=("train.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS).encode()),
                                         purpose="fine-tune")
            for i in range(args.repeats + 1):
                job = fine_tune(client, upload.id, args.poll)
                first = chat_streamed(client, job["model"], args.max_tokens)
                streamed = [chat_streamed(client, job["model"], args.max_tokens) for _ in range(args.warm)]
                plain = [chat_plain(client, job["model"], args.max_tokens) for _ in range(args.warm)]
                direct = child_client(server.root, job["model"])
                d_streamed = [chat_streamed(direct, job["model"], args.max_tokens) for _ in range(args.warm)] \
                    if direct else []
                d_plain = [chat_plain(direct, job["model"], args.max_tokens) for _ in range(args.warm)] \
                    if direct else []
                assert all(r["text"] == first["text"] for r in streamed + plain + d_streamed + d_plain), \
                    "greedy answers differ"
                client.models.delete(job["model"])
                label = "warm-up" if i == 0 else f"repeat {i}"
                running = "not seen" if job["running"] is None else f"{1000 * job['running']:.0f} ms"
                print(f"{label}: running {running}, first event {job['first_event']:.2f} s, first step "
                      f"{job['first_step']:.2f} s, succeeded {job['succeeded']:.2f} s; chat cold ttft "
                      f"{first['ttft']:.3f} s total {first['total']:.3f} s; warm ttft "
                      f"{statistics.median(s['ttft'] for s in streamed):.3f} s", flush=True)
                if i == 0:
                    warmup = {"job": job, "cold": first}
                    continue
                jobs.append(job)
                cold.append(first)
                warm_stream += streamed
                warm_plain += plain
                direct_stream += d_streamed
                direct_plain += d_plain
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "repeats": args.repeats, "warm_per_model": args.warm, "max_steps": args.max_steps,
        "max_tokens": args.max_tokens, "poll_s": args.poll, "answer": cold[0]["text"] if cold else None,
        "answer_chunks": cold[0]["chunks"] if cold else None,
        "answer_tokens": warm_plain[0]["tokens"] if warm_plain else None,
        "fine_tuning": {k: summary([j[k] for j in jobs]) for k in ("create", "running", "first_event", "first_step",
                                                                   "succeeded")},
        "chat_cold_streamed": {k: summary([c[k] for c in cold]) for k in ("ttft", "total")},
        "chat_warm_streamed": {k: summary([c[k] for c in warm_stream]) for k in ("ttft", "total")},
        "chat_warm_plain": {"total": summary([c["total"] for c in warm_plain])},
        "child_direct_streamed": {k: summary([c[k] for c in direct_stream]) for k in ("ttft", "total")},
        "child_direct_plain": {"total": summary([c["total"] for c in direct_plain])},
        "warmup": {"job": {k: v for k, v in warmup.get("job", {}).items() if k != "model"},
                   "cold": {k: v for k, v in warmup.get("cold", {}).items() if k != "text"}},
        "wall_s": round(time.time() - started, 1), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
        "openai": openai.__version__, "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(table(report))
    return 0


def table(report: dict) -> str:
    def cell(s: dict) -> str:
        if not s.get("n"):
            return "-"
        return f"{s['median_ms']:,.0f} ms ({s['min_ms']:,.0f}-{s['max_ms']:,.0f})" if s["median_ms"] >= 100 else \
            f"{s['median_ms']:.1f} ms ({s['min_ms']:.1f}-{s['max_ms']:.1f})"

    ft, rows = report["fine_tuning"], []
    rows.append(("`jobs.create` round trip", cell(ft["create"])))
    rows.append(("create -> status `running`", cell(ft["running"])))
    rows.append(("create -> first training event", cell(ft["first_event"])))
    rows.append(("create -> first step's metrics", cell(ft["first_step"])))
    rows.append(("create -> `succeeded`", cell(ft["succeeded"])))
    rows.append(("chat cold, streamed: first token", cell(report["chat_cold_streamed"]["ttft"])))
    rows.append(("chat cold, streamed: total", cell(report["chat_cold_streamed"]["total"])))
    rows.append(("chat warm, streamed: first token", cell(report["chat_warm_streamed"]["ttft"])))
    rows.append(("chat warm, streamed: total", cell(report["chat_warm_streamed"]["total"])))
    rows.append(("chat warm, plain: total", cell(report["chat_warm_plain"]["total"])))
    rows.append(("child directly (no proxy), streamed: first token", cell(report["child_direct_streamed"]["ttft"])))
    rows.append(("child directly (no proxy), streamed: total", cell(report["child_direct_streamed"]["total"])))
    rows.append(("child directly (no proxy), plain: total", cell(report["child_direct_plain"]["total"])))
    n = {"fine": ft["create"].get("n"), "cold": report["chat_cold_streamed"]["ttft"].get("n"),
         "warm": report["chat_warm_streamed"]["ttft"].get("n")}
    head = f"| measure (n: {n['fine']} jobs, {n['cold']} cold, {n['warm']} warm) | median (min-max) |\n|---|---|\n"
    return head + "\n".join(f"| {a} | {b} |" for a, b in rows)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
