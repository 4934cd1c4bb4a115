"""`qlora-kit bench`: a sweep of (method x sequence length x batch size x backend) cells, each in a fresh process.

The driver never imports Unsloth (cells do), checks every input before the first cell starts, and keeps going
when a cell runs out of memory or crashes: that cell is recorded as such. Results are written into OUT.partial/
and renamed to OUT only when the report is complete, so a directory named OUT always holds a finished sweep.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from qlora_kit.errors import UsageError


@dataclass
class Sweep:
    recipe: str
    overrides: list[str]
    backends: list[str]
    seq_lens: list[int]
    batch_sizes: list[int]
    steps: int
    warmup: int
    device: str  # auto | cpu | cuda (resolved in check())
    data: str  # synthetic | recipe
    out: Path
    overwrite: bool = False
    mem_limit: int | None = None
    cell_timeout: int = 1800
    repeats: int = 1
    argv: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: ["sft"])  # train.method of each cell

    def cells(self):
        """(method, backend, seq_len, batch_size, repeat), methods and backends interleaved within each repeat so
        that a machine slowing down or speeding up over the sweep affects every method and backend alike."""
        for seq_len in self.seq_lens:
            for batch_size in self.batch_sizes:
                for repeat in range(self.repeats):
                    for method in self.methods:
                        for backend in self.backends:
                            yield method, backend, seq_len, batch_size, repeat


def check(sweep: Sweep, recipe, shape) -> None:
    """Every bad input, before any cell runs. `recipe` is the parsed recipe, `shape` the model's config shape."""
    from qlora_kit.model.backends import BACKENDS

    unknown = [b for b in sweep.backends if b not in BACKENDS]
    if unknown:
        raise UsageError(f"--backends: unknown backend {unknown[0]!r}; available: {BACKENDS.choices()}")
    if shape.max_positions and max(sweep.seq_lens) > shape.max_positions:
        raise UsageError(f"--seq-lens: {max(sweep.seq_lens)} is above the model's context of {shape.max_positions} "
                         f"tokens (max_position_embeddings in {recipe.model.name}'s config); use at most "
                         f"{shape.max_positions}")
    if sweep.warmup >= sweep.steps:
        raise UsageError(f"--warmup: {sweep.warmup} leaves no measured step of --steps {sweep.steps}; "
                         "use fewer warm-up steps or more steps")
    sweep.device = _device(sweep.device if sweep.device != "auto" else recipe.train.device)
    if sweep.device == "cpu" and sweep.steps - sweep.warmup < 2:
        raise UsageError(f"--steps: on CPU the last step is profiled for memory and not timed; use --steps >= "
                         f"{sweep.warmup + 2} with --warmup {sweep.warmup}")
    _check_methods(sweep)
    if sweep.out.exists() and not sweep.overwrite:
        raise UsageError(f"--out: {sweep.out} already exists; pass --overwrite to replace it, or choose another "
                         "--out")


def _check_methods(sweep: Sweep) -> None:
    """The recipe must be valid under every method measured (a preference option of another method is an error
    there), and --data recipe needs rows of the method's kind: both said before any cell runs."""
    from qlora_kit.benchmark.cell import method_overrides
    from qlora_kit.errors import DataError, RecipeError
    from qlora_kit.recipe import load_recipe

    base = load_recipe(sweep.recipe, sweep.overrides)
    for method in sweep.methods:
        try:
            recipe = load_recipe(sweep.recipe, sweep.overrides + method_overrides(method, base))
        except RecipeError as exc:
            raise UsageError(f"--methods: {method}: {exc.problems[0]}") from None
        if sweep.data == "recipe":
            from qlora_kit.data.prepare import load_examples

            try:
                load_examples(recipe.data, recipe.train.seed, method=method)
            except DataError as exc:
                raise UsageError(f"--methods {method} with --data recipe: {exc}; or measure {method} on "
                                 "--data synthetic rows") from None


def _device(requested: str) -> str:
    from qlora_kit.training.auto import detect_device

    try:
        return detect_device(requested)
    except UsageError:
        raise UsageError("--device: cuda was asked for but no CUDA GPU is visible; use --device cpu") from None


def run(sweep: Sweep, recipe, shape) -> dict:
    from qlora_kit.benchmark.report import build_report, machine_info, write_report

    work = sweep.out.with_name(sweep.out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "cells").mkdir(parents=True)
    machine = machine_info(sweep.device)
    runs: dict[tuple, list[dict]] = {}  # insertion-ordered: the report lists cells in sweep order
    total = len(list(sweep.cells()))
    for index, (method, backend, seq_len, batch_size, repeat) in enumerate(sweep.cells(), 1):
        label = f"[{index}/{total}] {'' if sweep.methods == ['sft'] else method + ' '}{backend} seq {seq_len} " \
                f"batch {batch_size}"
        label += f" run {repeat + 1}/{sweep.repeats}" if sweep.repeats > 1 else ""
        print(f"{label}: running", flush=True)
        result = _run_cell(sweep, work / "cells", (method, backend, seq_len, batch_size), repeat)
        runs.setdefault((method, backend, seq_len, batch_size), []).append(result)
        print(f"{label}: {_summary(result)}", flush=True)
    cells = [combine(r) for r in runs.values()]
    report = build_report(sweep, recipe, shape, machine, cells)
    write_report(report, work)
    if sweep.out.exists():
        shutil.rmtree(sweep.out)
    work.rename(sweep.out)
    return report


MEMORY_KEYS = ("peak_rss_bytes", "peak_tensor_bytes", "peak_allocated_bytes", "peak_reserved_bytes")


def combine(runs: list[dict]) -> dict:
    """One cell from its repeats: the median run by tokens/s, with each peak-memory figure replaced by its own
    median over the runs (peak RSS moves by several percent between identical runs: heap layout), or the first
    failed run if any failed. Every run's headline numbers are kept under "runs"."""
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        cell = dict(failed[0])
    else:
        cell = dict(_median_by(runs, "tokens_per_second"))
        for key in MEMORY_KEYS:
            if cell.get(key) is not None:
                cell[key] = _median_by(runs, key)[key]
    if len(runs) > 1:
        keys = ("status", "tokens_per_second", *MEMORY_KEYS, "final_loss", "log")
        cell["runs"] = [{k: r[k] for k in keys if k in r} for r in runs]
    return cell


def _median_by(runs: list[dict], key: str) -> dict:
    ordered = sorted(runs, key=lambda r: r.get(key) or 0)
    return ordered[(len(ordered) - 1) // 2]  # the lower median: always one real run's value


def _run_cell(sweep: Sweep, cell_dir: Path, key: tuple, repeat: int = 0) -> dict:
    """key: (method, backend, seq_len, batch_size)."""
    method, backend, seq_len, batch_size = key
    name = ("" if method == "sft" else f"{method}-") + f"{backend}-s{seq_len}-b{batch_size}" + (
        f"-r{repeat + 1}" if sweep.repeats > 1 else "")
    spec = {"recipe": sweep.recipe, "overrides": sweep.overrides, "method": method, "backend": backend,
            "seq_len": seq_len, "batch_size": batch_size, "steps": sweep.steps, "warmup": sweep.warmup,
            "device": sweep.device, "data": sweep.data, "mem_limit": sweep.mem_limit}
    spec_path, result_path, log_path = (cell_dir / f"{name}.{ext}" for ext in ("spec.json", "json", "log"))
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    started = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            code = subprocess.call([sys.executable, "-m", "qlora_kit.benchmark.cell", str(spec_path), str(result_path)],
                                   stdout=log, stderr=subprocess.STDOUT, timeout=sweep.cell_timeout)
        except subprocess.TimeoutExpired:
            code = None
    base = {"method": method, "backend": backend, "seq_len": seq_len, "batch_size": batch_size,
            "wall_seconds": round(time.time() - started, 2), "log": f"cells/{log_path.name}"}
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8")) | base
    if code is None:
        return base | {"status": "timeout", "error": f"no result after --cell-timeout {sweep.cell_timeout} s"}
    if code < 0:  # killed by a signal: the kernel's OOM killer sends SIGKILL
        sig = signal.Signals(-code).name
        status = "oom" if sig == "SIGKILL" else "crashed"
        return base | {"status": status, "error": f"killed by {sig}" + (" (likely the OOM killer)" if
                                                                         status == "oom" else "")}
    return base | {"status": "crashed", "error": f"exit code {code} without a result; see {base['log']}"}


def _summary(cell: dict) -> str:
    if cell["status"] != "ok":
        return f"{cell['status'].upper()}: {cell.get('error', '')}"
    peak = cell.get("peak_allocated_bytes") or cell.get("peak_rss_bytes")
    return (f"{cell['tokens_per_second']:,.0f} tok/s, peak {peak / 2**20:,.0f} MiB, "
            f"final loss {cell['final_loss']:.4f}")
