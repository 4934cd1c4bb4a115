"""Step-to-SSE latency of `qlora-kit server` under a queue of 20 jobs.

    PYTHONPATH=. .venv/bin/python benchmarks/server_latency.py --jobs 20 --max-steps 5

Starts a server on 127.0.0.1 (fresh temporary root), submits the jobs at once from 20 threads, and follows every
job's event stream from its own client thread (20 open SSE connections for the whole run, as a dashboard watching
the queue would). For each `step` event the latency is the client's receive time minus the event's `t`, the time
the training process emitted it (same machine, same clock): what a UI waits between an optimizer step and its
progress bar moving. Prints p50/p99/max and writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from server_helpers import TINY, Server  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def follow(server: Server, job_id: str, latencies: list[float], counts: dict) -> None:
    from qlora_kit.server.client import sse_messages

    with server.client() as client, client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as response:
        for message in sse_messages(response.iter_lines()):
            if "data" not in message:
                continue
            received = time.time()
            event = json.loads(message["data"])
            counts[job_id] = counts.get(job_id, 0) + 1
            if event["event"] == "step":
                latencies.append(received - event["t"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--backend", default="hf", help="hf skips importing Unsloth in each child (faster start)")
    parser.add_argument("--out", default=str(HERE / "results" / "server_latency.json"))
    args = parser.parse_args()
    os.environ.setdefault("QLORA_KIT_HOME", tempfile.mkdtemp(prefix="qlora-kit-bench-home-"))
    recipe = {**TINY, "model": {**TINY["model"], "backend": args.backend},
              "train": {**TINY["train"], "max_steps": args.max_steps}}
    tmp = Path(tempfile.mkdtemp(prefix="qlora-kit-server-bench-"))
    server = Server(tmp / "root").start()
    load_before = os.getloadavg()
    started = time.time()
    try:
        ids: list[str] = []
        lock = threading.Lock()

        def submit() -> None:
            with server.client() as client:
                job = client.post("/v1/jobs", json={"recipe": recipe})
                job.raise_for_status()
                with lock:
                    ids.append(job.json()["id"])

        submitters = [threading.Thread(target=submit) for _ in range(args.jobs)]
        for t in submitters:
            t.start()
        for t in submitters:
            t.join(120)
        latencies: list[float] = []
        counts: dict = {}
        followers = [threading.Thread(target=follow, args=(server, i, latencies, counts), daemon=True) for i in ids]
        for t in followers:
            t.start()
        for t in followers:
            t.join(3 * 3600)
        with server.client() as client:
            statuses = [j["status"] for j in client.get("/v1/jobs").json()]
    finally:
        server.stop()
    wall = time.time() - started
    ms = [1000 * x for x in latencies]
    report = {
        "jobs": args.jobs, "max_steps": args.max_steps, "backend": args.backend, "statuses": statuses,
        "step_events": len(ms), "events_streamed": sum(counts.values()),
        "latency_ms": {"p50": round(percentile(ms, 50), 1), "p99": round(percentile(ms, 99), 1),
                       "max": round(max(ms), 1), "mean": round(statistics.fmean(ms), 1)},
        "wall_s": round(wall, 1), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if statuses.count("complete") == args.jobs and len(ms) == args.jobs * args.max_steps else 1


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
