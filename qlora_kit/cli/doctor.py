"""`qlora-kit doctor`: one screen about this machine to paste into a bug report; `--json` for tools."""

from __future__ import annotations


def register(subparsers, common) -> None:
    p = subparsers.add_parser("doctor", parents=[common], help="what this machine is and what will work on it",
                              description="OS, Python, CPU features, RAM, disk, GPUs, library versions, llama.cpp's "
                                          "own system info, active workarounds, and a verdict. No network, no "
                                          "training; paste it into a bug report.")
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema: qlora_kit.doctor.report."
                                                       "DoctorReport)")
    p.add_argument("--out", default="runs", help="the output directory whose free space to report (default: runs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.doctor.report import collect

    report = collect(args.out)
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    print("\n".join(render(report)))
    return 0


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def render(r) -> list[str]:
    features = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in r.cpu.features.items())
    lines = [f"qlora-kit {r.versions.get('qlora-kit') or '?'} doctor",
             f"os          {r.os}; Python {r.python}",
             f"cpu         {r.cpu.model}; {r.cpu.cores} cores",
             f"cpu flags   {features}",
             f"ram         {_gib(r.ram_bytes)} ({_gib(r.ram_available_bytes)} available)"]
    lines += [f"disk        {d.path}: {_gib(d.free_bytes)} free" for d in r.disks]
    if r.gpus:
        lines += [f"gpu         {g.name}; {_gib(g.memory_bytes)}; compute {g.compute_capability}; driver {g.driver}"
                  for g in r.gpus]
        lines.append(f"cuda        driver supports {r.cuda_driver_version}; torch built for {r.torch_cuda_version}")
    else:
        lines.append(f"gpu         none found (torch built for CUDA {r.torch_cuda_version})" if r.torch_cuda_version
                     else "gpu         none found; torch is a CPU build")
    lines.append("versions    " + ", ".join(f"{k} {v or '-'}" for k, v in r.versions.items() if k != "qlora-kit"))
    builds = [lib.split(".")[0].removeprefix("libbitsandbytes_") for lib in r.bitsandbytes_libraries]
    lines.append(f"bnb libs    {' '.join(builds) or 'none'}; the one for this torch's CUDA: "
                 f"{'found' if r.bitsandbytes_cuda else 'none (CPU torch)' if not r.torch_cuda_version else 'MISSING'}")
    if "error" in r.llama_cpp:
        lines.append(f"llama.cpp   cannot load: {r.llama_cpp['error']}")
    else:
        on = [k for k, v in r.llama_cpp["features"].items() if v not in ("0", "")]
        lines.append(f"llama.cpp   backends {', '.join(r.llama_cpp['backends'])}; uses {' '.join(on)}")
    lines += [f"guard       {g.name}: {'ACTIVE' if g.active else 'off'} ({g.why})" for g in r.guards]
    lines.append(f"verdict     {r.verdict.text}")
    return lines
