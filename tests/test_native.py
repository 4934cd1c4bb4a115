"""Issue #23: llama.cpp kept off its AMX path (the guard), native crashes named (never "exit code -11"), and
`qlora-kit doctor`."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli, write_recipe

LOADS = """
import json, sys
from qlora_kit.runtime import compat
from qlora_kit.native.loader import load
forced = {"auto": None, "amx": True, "none": False}[sys.argv[2]]
if forced is not None:
    compat._LLAMA_AMX_GUARD = None
    state = compat.keep_llama_cpp_off_amx(amx=forced)
else:
    state = compat.keep_llama_cpp_off_amx()
llm = load(sys.argv[1], n_ctx=64)
if sys.argv[3] == "decode":
    llm.eval(llm.tokenize(b"Hello world, hello"))
print(json.dumps({"extra_bufts": llm.model_params.use_extra_bufts, **state}))
"""


def _llama_has_amx() -> bool:
    probe = "import llama_cpp; print('AMX_INT8 = 1' in llama_cpp.llama_print_system_info().decode())"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "True"


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, tiny_model_dir):
    """A run directory as export sees one (run.json + merged/), with an adapter file to check it is left alone."""
    run = tmp_path_factory.mktemp("native") / "run"
    shutil.copytree(tiny_model_dir, run / "merged")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"not touched by export")
    (run / "run.json").write_text(json.dumps({"run_id": "r-native", "status": "complete"}))
    write_recipe(run / "recipe.yaml")
    from qlora_kit.eventlog import EventLog, attach_run

    (run / "events.jsonl").touch()
    log = EventLog()
    attach_run(log, run)
    log.emit("run_end", status="complete")  # a finished run: a stage run later must keep run_end last
    return run


@pytest.fixture(scope="module")
def q8_gguf(fake_run):
    result = run_cli("export", str(fake_run / "merged"), "--quant", "q8_0", "--out", str(fake_run.parent / "q8"),
                     "--no-verify")
    assert result.returncode == 0, result.stderr[-2000:]
    return fake_run.parent / "q8" / "merged-q8_0.gguf"


def _run_load(path, mode: str, decode: bool = True, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOADS, str(path), mode, "decode" if decode else "load"],
                          capture_output=True, text=True,
                          env={**__import__("os").environ, **env}, timeout=300)


def test_the_guard_loads_without_extra_buffers_when_amx_is_detected(q8_gguf):
    """Forced detection, so the guard is tested on CPUs without AMX too: the model llama.cpp loads has the
    repacking buffers off, and still decodes."""
    forced = _run_load(q8_gguf, "amx")
    assert forced.returncode == 0, forced.stderr[-2000:]
    state = json.loads(forced.stdout.splitlines()[-1])
    assert state["extra_bufts"] is False and state["active"] is True
    assert "#20824" in state["why"]
    plain = _run_load(q8_gguf, "none", decode=False)  # unguarded: decoding would crash on a CPU with AMX
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert json.loads(plain.stdout.splitlines()[-1])["extra_bufts"] is True


def test_the_guard_is_on_by_itself_where_llama_cpp_has_amx_kernels(q8_gguf):
    """Detection, not forcing: where the library reports AMX_INT8 the guard applies; elsewhere it stays off."""
    auto = _run_load(q8_gguf, "auto")
    assert auto.returncode == 0, auto.stderr[-2000:]
    state = json.loads(auto.stdout.splitlines()[-1])
    assert state["active"] is _llama_has_amx() and state["extra_bufts"] is (not _llama_has_amx())


def test_the_guard_is_still_needed_where_llama_cpp_has_amx_kernels(q8_gguf):
    """compat's rule: the library still behaves the way that made the workaround necessary. Without the guard
    (QLORA_KIT_LLAMA_AMX=on), decoding a Q8_0 file kills the process in llama.cpp's AMX kernels (SIGSEGV on the
    machine the issue was found on, SIGILL on a VM that does not grant AMX state)."""
    if not _llama_has_amx():
        pytest.skip("llama.cpp here has no AMX kernels (a CPU without AMX): nothing to reproduce")
    unguarded = _run_load(q8_gguf, "auto", QLORA_KIT_LLAMA_AMX="on")
    assert unguarded.returncode in (-signal.SIGSEGV, -signal.SIGILL), (unguarded.returncode, unguarded.stderr[-1000:])


def test_every_llama_cpp_load_goes_through_the_loader():
    """A `Llama(` anywhere else would skip the guard (and the crash note)."""
    calls = [str(p.relative_to(ROOT)) for p in (ROOT / "qlora_kit").rglob("*.py")
             for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Call)
             and getattr(node.func, "attr", getattr(node.func, "id", None)) == "Llama"]
    assert calls == ["qlora_kit/native/loader.py"]
    from qlora_kit.runtime import compat

    assert compat.VERIFIED["llama-cpp-python"] == "0.3.36" and "#20824" in compat.LLAMA_AMX_ISSUE


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_stage_killed_by_sigsegv_is_one_named_line_and_keeps_what_was_finished(fake_run):
    """A real SIGSEGV in the export child (a hook dereferences address 0 while the second file is written):
    one line naming the signal, the stage and the file; exit 139; the run's events end with the failure; the
    merged model, the adapter and the finished first GGUF are intact; nothing half-written looks complete."""
    before = {p: _sha(p) for p in [*(fake_run / "merged").iterdir(), fake_run / "adapter" / "adapter_model.safetensors"]}
    out = fake_run / "gguf"
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "tests" / "crash_hooks"),
           "QK_CRASH_WHILE_WRITING": "-q8_0.gguf.tmp"}  # f16 is written (and finished) first
    result = subprocess.run([sys.executable, "-m", "qlora_kit", "export", str(fake_run), "--quant", "f16,q8_0",
                             "--no-verify", "--hook", "qk_crash_hook:SegfaultWhileWriting", "--no-plugins"],
                            capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 128 + signal.SIGSEGV, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0] == (f"qlora-kit: error: the export stage crashed in native code: SIGSEGV (segmentation fault) "
                        f"while ggml was writing {out / 'run-q8_0.gguf.tmp'}. The files already finished are kept; "
                        "`qlora-kit doctor` shows this "
                        "machine's CPU features, versions and active workarounds for a bug report")
    events = [json.loads(line) for line in (fake_run / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("status")) for e in events[-3:]] == [("stage", "failed"), ("error", None),
                                                                     ("run_end", "failed")]
    assert events[-2]["message"] == lines[0].removeprefix("qlora-kit: error: ") and events[-2]["exit_code"] == 139
    assert events[-1]["error"] == events[-2]["message"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {p: _sha(p) for p in before} == before
    assert (out / "run-f16.gguf").is_file() and not (out / "run-q8_0.gguf").exists()
    from qlora_kit.native.loader import load

    llm = load(out / "run-f16.gguf", n_ctx=32)  # the finished file is whole: llama.cpp loads and runs it
    try:
        llm.eval(llm.tokenize(b"hello"))
    finally:
        llm.close()


def test_the_python_api_survives_a_llama_cpp_crash(fake_run):
    """qk.export runs llama.cpp in a child: the real AMX crash (guard switched off) reaches the host as a
    NativeCrash, and the host goes on."""
    if not _llama_has_amx():
        pytest.skip("llama.cpp here has no AMX kernels: no real llama.cpp crash to provoke (the hook test above "
                    "covers the report)")
    host = ("import qlora_kit as qk, sys\n"
            "from qlora_kit.errors import NativeCrash\n"
            "try:\n    qk.export(sys.argv[1], 'q8_0', out=sys.argv[2], overwrite=True)\n"
            "except NativeCrash as exc:\n    print('caught', exc.exit_code, exc)\n")
    result = subprocess.run([sys.executable, "-c", host, str(fake_run), str(fake_run / "amx")], capture_output=True,
                            text=True, env={**__import__("os").environ, "QLORA_KIT_LLAMA_AMX": "on"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    # SIGSEGV where the issue was found; SIGILL on a VM that does not grant the AMX tile state.
    assert re.match(r"caught (139 the export stage crashed in native code: SIGSEGV \(segmentation fault\)|132 the "
                    r"export stage crashed in native code: SIGILL \(illegal instruction: one this CPU or VM does not "
                    r"allow\)) while llama.cpp was verifying \S+/amx/run-q8_0.gguf.tmp\. The files already finished "
                    r"are kept; `--no-verify` writes GGUF files without running llama.cpp; ", line), line
    assert not list((fake_run / "amx").glob("*.gguf"))


def test_doctor_prints_one_screen_and_json_with_every_field():
    from qlora_kit.doctor.report import CPU_FEATURES, PACKAGES, DoctorReport

    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    report = DoctorReport.model_validate(data)
    assert set(data) == set(DoctorReport.model_fields)
    assert set(report.cpu.features) == set(CPU_FEATURES) and set(report.versions) == set(PACKAGES)
    assert report.cpu.cores >= 1 and report.ram_bytes > 2**30 and len(report.disks) == 2
    assert all(d.free_bytes and d.free_bytes > 0 for d in report.disks)
    assert report.versions["llama_cpp_python"] == "0.3.36" and report.versions["torch"].startswith("2.13.0")
    assert "CPU" in report.llama_cpp["backends"] and report.verdict.cpu_training and report.verdict.verification
    assert [g.name for g in report.guards] == ["keep_llama_cpp_off_amx", "exact_nf4_on_cpu"]
    assert report.guards[0].active is _llama_has_amx()
    text = run_cli("doctor")
    assert text.returncode == 0, text.stderr[-2000:]
    lines = text.stdout.splitlines()
    assert lines[0].startswith("qlora-kit ") and lines[-1].startswith("verdict     works here: CPU training")
    assert any(line.startswith("guard       keep_llama_cpp_off_amx: ") for line in lines)
    assert len(lines) <= 24  # one screen
