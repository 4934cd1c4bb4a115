"""The doctor's report: a pydantic model (its JSON Schema is `DoctorReport.model_json_schema()`) and `collect`."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, Field

# The CPU features that decide what runs fast or at all: AVX2/AVX-512 for llama.cpp and bitsandbytes' CPU kernels,
# AVX-512 BF16 for bitsandbytes' NF4 repack (compat.exact_nf4_on_cpu), AMX for llama.cpp's AMX path
# (compat.keep_llama_cpp_off_amx).
CPU_FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                "amx_bf16")
PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo", "triton",
            "llama_cpp_python", "gguf", "accelerate", "datasets", "qlora-kit")
# A C compiler: Triton (Unsloth's GPU kernels) compiles a small launcher with one at run time ($CC wins), and pip
# builds llama-cpp-python from source with one and cmake (`make install`).
C_COMPILERS = ("cc", "gcc", "clang")
NVIDIA_SMI_TIMEOUT_S = 10


class Cpu(BaseModel):
    model: str = Field(description="The CPU's model name (/proc/cpuinfo), or the platform's processor string.")
    cores: int = Field(description="Cores this process may use (its affinity mask).")
    features: dict[str, bool] = Field(description="Each feature in CPU_FEATURES: whether the CPU reports it.")


class Disk(BaseModel):
    path: str
    free_bytes: int | None = Field(description="Free space on the file system holding `path` (or its nearest "
                                               "existing parent); None if it cannot be read.")


class Gpu(BaseModel):
    name: str
    memory_bytes: int | None
    compute_capability: str | None
    driver: str | None


class Guard(BaseModel):
    name: str = Field(description="The workaround's function in qlora_kit.runtime.compat.")
    active: bool
    why: str


class Verdict(BaseModel):
    cpu_training: bool = Field(description="QLoRA training on CPU (torch, bitsandbytes' CPU library, Unsloth or hf).")
    gpu_training_unsloth: bool = Field(description="An NVIDIA GPU and nothing in `gpu_missing`.")
    gguf_export: bool = Field(description="Writing GGUF files (gguf, and ggml's quantizers from llama-cpp-python).")
    verification: bool = Field(description="Running GGUF files through llama.cpp (export checks, eval, chat).")
    text: str = Field(description="The verdict in one line.")


class DoctorReport(BaseModel):
    os: str
    python: str
    cpu: Cpu
    ram_bytes: int | None
    ram_available_bytes: int | None
    disks: list[Disk] = Field(description="The output directory and $QLORA_KIT_HOME.")
    gpus: list[Gpu] = Field(description="From nvidia-smi; empty without an NVIDIA GPU (or without nvidia-smi).")
    cuda_driver_version: str | None = Field(description="The highest CUDA version the driver supports (nvidia-smi).")
    torch_cuda_version: str | None = Field(description="The CUDA version torch was built for; None for a CPU build.")
    versions: dict[str, str | None] = Field(description="Installed versions (None: not installed).")
    bitsandbytes_libraries: list[str] = Field(description="bitsandbytes' native libraries (CPU and CUDA builds).")
    bitsandbytes_cuda: bool = Field(description="Whether bitsandbytes has the CUDA library for torch's CUDA version "
                                               "(libbitsandbytes_cudaXYZ for CUDA X.YZ), the one it loads.")
    build_tools: dict[str, str | None] = Field(description="Where the C compiler ($CC, else cc, gcc or clang) and "
                                                          "cmake are (None: not found). Triton compiles with the "
                                                          "compiler at run time; pip builds llama-cpp-python with "
                                                          "both.")
    gpu_missing: list[str] = Field(description="Only on a machine with an NVIDIA GPU: what GPU training with Unsloth "
                                               "still lacks here, one item each (a CUDA build of torch, bitsandbytes' "
                                               "CUDA library, triton, unsloth, a C compiler; cmake where "
                                               "llama-cpp-python is not installed yet). Empty: nothing, or no GPU.")
    llama_cpp: dict = Field(description="llama.cpp's own system info: backends and CPU features it uses.")
    guards: list[Guard] = Field(description="Workarounds in qlora_kit.runtime.compat and whether each applies here.")
    verdict: Verdict


def collect(out_dir: str | Path = "runs") -> DoctorReport:
    from qlora_kit.model.builtin import cache_root

    cpu = _cpu()
    meminfo = _meminfo()
    gpus, cuda_driver = _gpus()
    versions = {name: _version(name) for name in PACKAGES}
    bnb_libs = _bnb_libraries()
    llama, guard = _llama_cpp()
    torch_cuda = _torch_cuda(versions["torch"])
    guards = [Guard(name="keep_llama_cpp_off_amx", **guard)] if guard else []
    guards.append(Guard(name="exact_nf4_on_cpu", active=cpu.features.get("avx512_bf16", False),
                        why="bitsandbytes repacks NF4 weights to bf16 on CPUs with AVX-512 BF16; kept off so "
                            "training and merge see the weights the run loaded" if cpu.features.get("avx512_bf16")
                        else "no AVX-512 BF16: bitsandbytes has no repack to keep off"))
    report = DoctorReport(
        os=f"{platform.system()} {platform.release()} ({platform.machine()})", python=sys.version.split()[0],
        cpu=cpu, ram_bytes=meminfo.get("MemTotal"), ram_available_bytes=meminfo.get("MemAvailable"),
        disks=[_disk(Path(out_dir)), _disk(cache_root())], gpus=gpus, cuda_driver_version=cuda_driver,
        torch_cuda_version=torch_cuda, versions=versions, bitsandbytes_libraries=bnb_libs,
        bitsandbytes_cuda=_bnb_cuda_library(bnb_libs, torch_cuda), build_tools=_build_tools(), gpu_missing=[],
        llama_cpp=llama, guards=guards,
        verdict=Verdict(cpu_training=False, gpu_training_unsloth=False, gguf_export=False, verification=False, text=""))
    report.gpu_missing = _gpu_missing(report)
    report.verdict = _verdict(report)
    return report


def _cpu() -> Cpu:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Cpu(model=model, cores=cores, features={f: f in flags for f in CPU_FEATURES})


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def _disk(path: Path) -> Disk:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return Disk(path=str(path), free_bytes=shutil.disk_usage(probe).free)
    except OSError:
        return Disk(path=str(path), free_bytes=None)


def _gpus() -> tuple[list[Gpu], str | None]:
    """NVIDIA GPUs as nvidia-smi lists them (no torch import: that alone takes longer than this whole report)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], None
    query = [smi, "--query-gpu=name,memory.total,compute_cap,driver_version", "--format=csv,noheader,nounits"]
    try:
        rows = subprocess.run(query, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S).stdout
        header = subprocess.run([smi], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S).stdout
    except (OSError, subprocess.TimeoutExpired):
        return [], None
    gpus = []
    for row in rows.strip().splitlines():
        name, mem, cap, driver = ([*(c.strip() for c in row.split(",")), None, None, None])[:4]
        gpus.append(Gpu(name=name, memory_bytes=int(mem) * 2**20 if mem and mem.isdigit() else None,
                        compute_capability=cap, driver=driver))
    cuda = header.split("CUDA Version:")[1].split()[0] if "CUDA Version:" in header else None
    return gpus, cuda


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch_cuda(version: str | None) -> str | None:
    """torch.version.cuda without importing torch: the file its build writes."""
    if version is None:
        return None
    try:
        text = (Path(metadata.distribution("torch").locate_file("torch/version.py"))).read_text()
    except (OSError, metadata.PackageNotFoundError):
        return None
    for line in text.splitlines():
        if line.startswith("cuda"):
            value = line.split("=", 1)[1].strip().strip("'\"")
            return None if value in ("None", "") else value
    return None


def _bnb_libraries() -> list[str]:
    try:
        files = metadata.files("bitsandbytes") or []
    except metadata.PackageNotFoundError:
        return []
    return sorted(Path(str(f)).name for f in files if Path(str(f)).name.startswith("libbitsandbytes"))


def _bnb_cuda_library(libs: list[str], torch_cuda: str | None) -> bool:
    """bitsandbytes loads libbitsandbytes_cuda<major><minor> for the CUDA version torch was built with."""
    if not torch_cuda:
        return False
    wanted = "libbitsandbytes_cuda" + "".join(torch_cuda.split(".")[:2])
    return any(lib.split(".")[0] == wanted for lib in libs)


def _build_tools() -> dict[str, str | None]:
    cc = os.environ.get("CC")
    found = shutil.which(cc.split()[0]) if cc else None
    for name in C_COMPILERS if not found else ():
        found = found or shutil.which(name)
    return {"c_compiler": found, "cmake": shutil.which("cmake")}


def _gpu_missing(r: DoctorReport) -> list[str]:
    """What stands between this machine's NVIDIA GPU and training on it (nothing to say without a GPU)."""
    if not r.gpus:
        return []
    v, missing = r.versions, []
    if not r.torch_cuda_version:
        missing.append(f"a CUDA build of torch ({v['torch']} is a CPU build)" if v["torch"] else "torch")
    elif not r.bitsandbytes_cuda:
        missing.append(f"bitsandbytes' CUDA library for CUDA {r.torch_cuda_version} (libbitsandbytes_cuda"
                       f"{''.join(r.torch_cuda_version.split('.')[:2])})")
    missing += [f"{name} ({why})" for name, why in (("triton", "Unsloth's GPU kernels"), ("unsloth", "the backend"))
                if not v[name]]
    if not r.build_tools["c_compiler"]:
        missing.append("a C compiler (cc, gcc or clang, or $CC), which Triton builds its launcher with")
    if not r.build_tools["cmake"] and not v["llama_cpp_python"]:
        missing.append("cmake (pip builds llama-cpp-python from source with it)")
    return missing


def _llama_cpp() -> tuple[dict, dict | None]:
    try:
        from qlora_kit.runtime.compat import keep_llama_cpp_off_amx
        from qlora_kit.native.loader import system_info

        info = system_info()
        return {k: info[k] for k in ("backends", "features")}, keep_llama_cpp_off_amx()
    except Exception as exc:  # a broken or missing build is a finding, not a crash of the doctor
        return {"error": f"{type(exc).__name__}: {exc}"}, None


def _verdict(r: DoctorReport) -> Verdict:
    v = r.versions
    cpu = bool(v["torch"] and v["bitsandbytes"] and any("cpu" in lib for lib in r.bitsandbytes_libraries))
    gpu = bool(r.gpus) and not r.gpu_missing
    export = bool(v["gguf"] and "error" not in r.llama_cpp)
    verify = export and "CPU" in r.llama_cpp.get("backends", [])
    missing = [what for what, ok in (("GPU training with Unsloth", gpu), ("CPU training", cpu),
                                     ("GGUF export", export), ("verification", verify)) if not ok]
    works = [what for what, ok in (("CPU training", cpu), ("GPU training with Unsloth", gpu),
                                   ("GGUF export", export), ("verification through llama.cpp", verify)) if ok]
    why_no_gpu = "no NVIDIA GPU found"
    if r.gpus:
        why_no_gpu = f"it still needs: {'; '.join(r.gpu_missing)}; `make install` on this machine installs the " \
                     "Python packages"
    text = f"works here: {', '.join(works) or 'nothing'}"
    if missing:
        text += f"; not here: {', '.join(missing)}" + (f" ({why_no_gpu})" if not gpu else "")
    return Verdict(cpu_training=cpu, gpu_training_unsloth=gpu, gguf_export=export, verification=verify, text=text)
