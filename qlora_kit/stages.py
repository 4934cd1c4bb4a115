"""`qk.merge`, `qk.export`, `qk.evaluate`, `qk.plan`, `qk.bench`: the CLI commands as typed calls.

Keyword options are the commands' flags (`max_shard_size="2GB"` is `--max-shard-size 2GB`; True turns a switch on)
and are parsed by the CLI's own parser, so the API and the CLI cannot drift apart and a bad option is the same
one-line error. Merge and export need plain transformers: where Unsloth was already imported into this process
(an in-process `qk.train`), they run as a `qlora-kit` child process and their events are forwarded. Export and
eval run llama.cpp, whose crashes end a process past any `except`: they always run as a child (NATIVE_STAGES).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable

from pydantic import BaseModel, ConfigDict

from qlora_kit.errors import UsageError, error_for_kind
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


def merge(run_dir: str | Path, *, hooks: Iterable[Any] = (), events: IO[str] | None = None, plugins: bool = True,
          **options: Any) -> MergeResult:
    """Merge a complete run's adapter into 16-bit weights (options: base, dtype, out, max_shard_size, no_verify,
    no_compare, samples, allow_mismatch, overwrite)."""
    out, artifacts = _stage("merge", str(run_dir), options, hooks, events, plugins)
    report = _json(out / "merge_report.json")
    return MergeResult(status="complete", run_dir=str(Path(run_dir).absolute()), out_dir=str(out), metrics=report,
                       artifacts=artifacts)


def export(source: str | Path, quant: str | list[str] = "q8_0", *, hooks: Iterable[Any] = (),
           events: IO[str] | None = None, plugins: bool = True, **options: Any) -> ExportResult:
    """Write verified GGUF files from a run (its merged model) or a model directory (options: out, no_verify,
    allow_mismatch, samples, overwrite)."""
    options["quant"] = quant if isinstance(quant, str) else ",".join(quant)
    out, artifacts = _stage("export", str(source), options, hooks, events, plugins)
    is_run = (Path(source) / "run.json").is_file()
    return ExportResult(status="complete", run_dir=str(Path(source).absolute()) if is_run else None,
                        out_dir=str(out), metrics=_json(out / "export_report.json"), artifacts=artifacts)


class EvalReport(BaseModel):
    """What `qlora-kit eval` writes to RUN_DIR/eval/report.json, and where."""

    model_config = ConfigDict(extra="allow")
    out_dir: str
    verdict: dict[str, Any]
    results: dict[str, dict[str, Any]]
    warnings: list[str]
    artifacts: list[Artifact] = []


def evaluate(run_dir: str | Path, *, hooks: Iterable[Any] = (), events: IO[str] | None = None, plugins: bool = True,
             **options: Any) -> EvalReport:
    """Compare base, few-shot, adapter, merged and GGUF on held-out rows (options: systems, samples, data,
    max_new_tokens, fewshot, scorer, out)."""
    out, artifacts = _stage("eval", str(run_dir), options, hooks, events, plugins)
    report = _json(out / "report.json") or {}
    return EvalReport(out_dir=str(out), artifacts=artifacts, **report)


def plan(recipe, **options: Any) -> Plan:
    """Predict peak training memory (options: gpu_mem, device, backend, seq_len, batch_size, overrides)."""
    from qlora_kit.cli.plan import make_plan

    with _recipe_file(recipe) as path:
        args = _parse("plan", path, options)
        result, _ = make_plan(args)
    return Plan(**result)


def bench(recipe, **options: Any) -> BenchReport:
    """Benchmark backends x sequence lengths x batch sizes (options: the `qlora-kit bench` flags)."""
    from qlora_kit.cli.bench import run_bench

    with _recipe_file(recipe) as path:
        args = _parse("bench", path, options)
        report, out = run_bench(args)
    return BenchReport(out_dir=str(out), **report)


def _stage(command: str, positional: str, options: dict, hooks, events, plugins) -> tuple[Path, list[Artifact]]:
    from qlora_kit.api import make_log, unsloth_imported

    args = _parse(command, positional, options)
    log, warnings = make_log(hooks, events, plugins)
    found: list[Artifact] = []
    log.deliver.append(lambda e: found.append(Artifact(kind=e.kind, path=e.path, bytes=e.bytes, sha256=e.sha256))
                       if e.event == "artifact" else None)
    if unsloth_imported() or command in NATIVE_STAGES:
        out = _in_child(command, positional, options, log)
    else:
        module = __import__(f"qlora_kit.cli.{command}", fromlist=["execute"])
        out = module.execute(args, log, warnings)
    return Path(out), found


def _in_child(command: str, positional: str, options: dict, log) -> Path:
    """Run the command in a fresh process; its events are numbered there and delivered here as they were."""
    from qlora_kit.events import parse_event
    from qlora_kit.native.crash import crash_error, died_by_signal, watched_child_env

    with tempfile.TemporaryDirectory(prefix="qlora-kit-stage-") as tmp:
        events = Path(tmp) / "events.jsonl"
        cmd = [sys.executable, "-m", "qlora_kit", command, positional, *_flags(options), "--events", str(events),
               "--no-plugins"]
        with watched_child_env() as (env, noted):
            code = subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            crash = crash_error(command, code, noted()) if died_by_signal(code) else None
        seen = [parse_event(line) for line in events.read_text().splitlines() if line.strip()] \
            if events.is_file() else []
    for event in seen:
        for deliver in log.deliver:
            deliver(event)
    if crash is not None:  # the child's own events end where it died: end them as the stage would have
        log.emit("stage", name=command, status="failed", error=str(crash))
        log.emit("error", kind=crash.kind, message=str(crash), exit_code=crash.exit_code)
        raise crash
    errors = [e for e in seen if e.event == "error"]
    if code != 0:
        raise error_for_kind(errors[-1].kind if errors else "runtime",
                             errors[-1].message if errors else f"qlora-kit {command} exited with code {code}")
    reports = ("merge_report", "export_report", "eval_report")
    outs = [e for e in seen if e.event == "artifact" and e.kind in reports]
    return Path(outs[-1].path).parent


def _flags(options: dict) -> list[str]:
    argv: list[str] = []
    for key, value in options.items():
        if key == "overrides":
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for k, v in items:
                argv += ["--set", v if k is None else f"{k}={v}"]
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return argv


def _parse(command: str, positional: str, options: dict):
    from qlora_kit.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args([command, positional, *_flags(options)])
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        raise UsageError(f"qk.{command}: {lines[-1].split(': error: ')[-1] if lines else 'bad options'}") from None


@contextlib.contextmanager
def _recipe_file(recipe):
    """The CLI-shaped commands read a recipe file; a dict or Recipe is written to a temporary one."""
    if isinstance(recipe, (str, Path)):
        yield str(recipe)
        return
    from qlora_kit.recipe import dump_recipe, load_recipe

    with tempfile.TemporaryDirectory(prefix="qlora-kit-recipe-") as tmp:
        parsed = load_recipe(recipe)
        path = Path(tmp) / f"{parsed.output.name}.yaml"
        path.write_text(dump_recipe(parsed), encoding="utf-8")
        yield str(path)


def _json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
