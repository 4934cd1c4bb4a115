"""`qk.merge`, `qk.export`, `qk.evaluate`, `qk.plan`, `qk.bench`: the stages as typed calls.

Each takes its stage's options model (qlora_kit/recipe/options.py), or the model's fields as keyword arguments,
validated by the same model the CLI generates its flags from: `qk.merge(run, max_shard_size="500MB")` is
`qlora-kit merge RUN --max-shard-size 500MB`. Errors are the project's typed errors (never SystemExit).
Merge and export need plain transformers: where Unsloth was already imported into this process (an in-process
`qk.train`), they run as a `qlora-kit` child process and their events are forwarded. Export and eval run llama.cpp, whose crashes end a process past any `except`: they always run as a child (NATIVE_STAGES).
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable

from pydantic import BaseModel, ConfigDict

from qlora_kit.recipe import Recipe, dump_recipe, load_recipe
from qlora_kit.recipe.options import (BenchOptions, EvalOptions, ExportOptions, MergeOptions, PlanOptions,
                                     check_names, make_options, to_argv)
from qlora_kit.results import Artifact, ExportResult, MergeResult


# Stages that run llama.cpp: always in a child process, so a native crash there is reported, never the host's end.
NATIVE_STAGES = ("export", "eval")


class Plan(BaseModel):
    """What `qlora-kit plan --json` prints."""

    model_config = ConfigDict(extra="allow")
    model: str
    model_type: str
    params: int
    device: str | None
    budget_bytes: int | None
    terms: dict[str, int]
    tensor_peak_bytes: int
    runtime_bytes: int
    needed_bytes: int
    fits: bool | None = None
    largest_seq_len: int | None = None
    largest_batch_size: int | None = None


class BenchReport(BaseModel):
    """What `qlora-kit bench` writes to report.json, and where."""

    model_config = ConfigDict(extra="allow")
    out_dir: str
    cells: list[dict[str, Any]]


def merge(run_dir: str | Path, options: MergeOptions | None = None, *, out: str | Path | None = None,
          overwrite: bool = False, hooks: Iterable[Any] = (), events: IO[str] | None = None, plugins: bool = True,
          **fields: Any) -> MergeResult:
    """Merge a complete run's adapter into 16-bit weights. Options: a MergeOptions, or its fields as keywords
    (base, dtype, max_shard_size, verify, compare, samples, allow_mismatch)."""
    opts = make_options(MergeOptions, fields, base=options, caller="qk.merge")
    out_dir, artifacts = _stage("merge", run_dir, opts, {"out": out, "overwrite": overwrite}, hooks, events, plugins)
    return MergeResult(status="complete", run_dir=str(Path(run_dir).absolute()), out_dir=str(out_dir),
                       metrics=_json(out_dir / "merge_report.json"), artifacts=artifacts)


def export(source: str | Path, quant: str | list[str] | None = None, options: ExportOptions | None = None, *,
           out: str | Path | None = None, overwrite: bool = False, hooks: Iterable[Any] = (),
           events: IO[str] | None = None, plugins: bool = True, **fields: Any) -> ExportResult:
    """Write verified GGUF files from a run (its merged model) or a model directory. Options: an ExportOptions,
    or its fields as keywords (quant, verify, samples, allow_mismatch)."""
    if quant is not None:
        fields["quant"] = quant
    opts = make_options(ExportOptions, fields, base=options, caller="qk.export")
    out_dir, artifacts = _stage("export", source, opts, {"out": out, "overwrite": overwrite}, hooks, events, plugins)
    is_run = (Path(source) / "run.json").is_file()
    return ExportResult(status="complete", run_dir=str(Path(source).absolute()) if is_run else None,
                        out_dir=str(out_dir), metrics=_json(out_dir / "export_report.json"), artifacts=artifacts)


class EvalReport(BaseModel):
    """What `qlora-kit eval` writes to RUN_DIR/eval/report.json, and where."""

    model_config = ConfigDict(extra="allow")
    out_dir: str
    verdict: dict[str, Any]
    results: dict[str, dict[str, Any]]
    warnings: list[str]
    artifacts: list[Artifact] = []


def evaluate(run_dir: str | Path, options: EvalOptions | None = None, *, out: str | Path | None = None,
             hooks: Iterable[Any] = (), events: IO[str] | None = None, plugins: bool = True,
             **fields: Any) -> EvalReport:
    """Compare base, few-shot, adapter, merged and GGUF on held-out rows. Options: an EvalOptions, or its fields
    as keywords (systems, samples, data, max_new_tokens, fewshot, scorer, gguf_drop, match_margin, seed); without
    an EvalOptions the run's recipe `eval:` section is the starting point."""
    from qlora_kit.eval.run import run_eval_section

    # The given options, else the run's own eval: section (as train's eval stage used it), then the keywords.
    opts = make_options(EvalOptions, fields, base=options or run_eval_section(run_dir), caller="qk.evaluate")
    out_dir, artifacts = _stage("eval", run_dir, opts, {"out": out}, hooks, events, plugins)
    return EvalReport(out_dir=str(out_dir), artifacts=artifacts, **(_json(out_dir / "report.json") or {}))


def plan(recipe, options: PlanOptions | None = None, *, overrides: dict | list | None = None,
         **fields: Any) -> Plan:
    """Predict peak training memory. Options: a PlanOptions, or its fields as keywords (gpu_mem, device, gpu,
    backend, seq_len, batch_size, nproc, strategy): `qk.plan(recipe, gpu="rtx4090")`."""
    from qlora_kit.planner.make import run_plan

    opts = make_options(PlanOptions, fields, base=options, caller="qk.plan")
    result, _ = run_plan(load_recipe(recipe, overrides), opts)
    return Plan(**result)


def bench(recipe, options: BenchOptions | None = None, *, out: str | Path = "bench", overwrite: bool = False,
          overrides: dict | list | None = None, **fields: Any) -> BenchReport:
    """Benchmark backends x sequence lengths x batch sizes. Options: a BenchOptions, or its fields as keywords
    (backends, methods, seq_lens, batch_sizes, steps, warmup, repeats, data, device, mem_limit, cell_timeout), over the
    recipe's bench section."""
    from qlora_kit.benchmark.run import run_bench

    check_names(BenchOptions, fields, "qk.bench")
    parsed = load_recipe(recipe, overrides)
    opts = make_options(BenchOptions, fields, base=options or parsed.bench, caller="qk.bench")
    with _recipe_file(recipe, parsed, overrides) as (path, sets):
        report, out_dir = run_bench(parsed, path, sets, opts, out=out, overwrite=overwrite)
    return BenchReport(out_dir=str(out_dir), **report)


# The stages on a run directory, in this process: command -> "module:function".
_RUNNERS = {"merge": "qlora_kit.merging.run:run_merge", "export": "qlora_kit.gguf.run:run_export",
            "eval": "qlora_kit.eval.run:run_eval"}


def _stage(command: str, target: str | Path, options, call: dict, hooks, events,
           plugins) -> tuple[Path, list[Artifact]]:
    from qlora_kit.api import make_log, unsloth_imported

    log, warnings = make_log(hooks, events, plugins)
    found: list[Artifact] = []
    log.deliver.append(lambda e: found.append(Artifact(kind=e.kind, path=e.path, bytes=e.bytes, sha256=e.sha256))
                       if e.event == "artifact" else None)
    if unsloth_imported() or command in NATIVE_STAGES:
        argv = [str(target), *to_argv(options)] + (["--out", str(call["out"])] if call.get("out") else []) \
            + (["--overwrite"] if call.get("overwrite") else [])
        out = _in_child(command, argv, log)
    else:
        module, name = _RUNNERS[command].split(":")
        runner = getattr(importlib.import_module(module), name)
        out = runner(str(target), options, log, warnings=warnings, **{k: v for k, v in call.items() if v})
    return Path(out), found


def _in_child(command: str, argv: list[str], log) -> Path:
    """Run the stage in a fresh process (process/child.py); its events are numbered there and delivered here as
    they were. Returns the directory of the report it wrote."""
    from qlora_kit.process import run_stage_child

    seen = run_stage_child(command, argv, log)
    reports = ("merge_report", "export_report", "eval_report")
    outs = [e for e in seen if e.event == "artifact" and e.kind in reports]
    return Path(outs[-1].path).parent


@contextlib.contextmanager
def _recipe_file(recipe, parsed: Recipe, overrides):
    """The bench cells load the recipe in processes of their own: its file and overrides, or (for a dict or a
    Recipe) a temporary file of the parsed recipe."""
    if isinstance(recipe, (str, Path)):
        items = overrides.items() if isinstance(overrides, dict) else ((None, v) for v in overrides or [])
        yield str(recipe), [v if k is None else f"{k}={v}" for k, v in items]
        return
    with tempfile.TemporaryDirectory(prefix="qlora-kit-recipe-") as tmp:
        path = Path(tmp) / f"{parsed.output.name}.yaml"
        path.write_text(dump_recipe(parsed), encoding="utf-8")
        yield str(path), []


def _json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
