"""`qlora-kit plan RECIPE [--gpu-mem 24GiB] [--device NAME]`: will this recipe fit, from the config alone."""

from __future__ import annotations

import json
from dataclasses import replace

from qlora_kit.cli import add_recipe_args

GIB = 2**30
LIMITS = {"seq_len": 131072, "batch_size": 1024}


def register(subparsers, common) -> None:
    from qlora_kit.plan.gpus import GPUS

    p = subparsers.add_parser(
        "plan", parents=[common], help="predict peak training memory and whether it fits (loads no weights)",
        description="Predict the peak GPU memory of training this recipe from the model's config.json alone "
                    "(4-bit weights, 16-bit embeddings and head, LoRA weights, gradients and optimizer states, "
                    "activations, logits, runtime overhead), say whether it fits, and find the longest sequence "
                    "and the largest batch that do. A Hub model's config.json is fetched; nothing else is.")
    add_recipe_args(p)
    p.add_argument("--gpu-mem", metavar="SIZE",
                   help="GPU memory to plan for, in GiB: 24, 24G, 24GB and 24GiB all mean 24 GiB (as GPU makers "
                        "write it); M/MB/MiB are MiB; under 1 GiB is refused (default: --device's)")
    p.add_argument("--device", metavar="NAME",
                   help=f"a GPU by name ({', '.join(GPUS)}), 'cuda' for this machine's GPU, or 'cpu' "
                        "(default: this machine's GPU if it has one)")
    p.add_argument("--backend", choices=("unsloth", "hf"), help="default: the recipe's model.backend")
    p.add_argument("--seq-len", type=int, help="default: the recipe's model.max_seq_length")
    p.add_argument("--batch-size", type=int, help="default: the recipe's train.batch_size")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="plan one GPU of an N-process run (default: the recipe's distributed.nproc x nnodes, else 1)")
    p.add_argument("--strategy", choices=("none", "ddp", "fsdp"),
                   help="ddp: a full copy per GPU; fsdp: 4-bit weights, LoRA and optimizer states sharded over the "
                        "processes (default: the recipe's distributed.strategy, ddp when --nproc is above 1)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    plan, p = make_plan(args)
    print(json.dumps(plan, indent=2) if args.json else _text(plan, p))
    return 0


def make_plan(args) -> tuple[dict, object]:
    """The plan as a dict (what --json prints) and the planner's input; `qk.plan` returns the same dict, typed."""
    from qlora_kit.errors import UsageError
    from qlora_kit.plan.estimate import estimate, largest_fitting, runtime_bytes
    from qlora_kit.plan.inputs import plan_input_for
    from qlora_kit.plan.shape import load_config, shape_from_config
    from qlora_kit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    for flag, value in (("--seq-len", args.seq_len), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag}: {value} must be at least 1")
    device, gpu_name, budget, bf16 = _target(args)
    config, source = load_config(recipe.model.name, recipe.model.revision)
    shape = shape_from_config(config)
    seq_len = args.seq_len or recipe.model.max_seq_length
    if shape.max_positions and seq_len > shape.max_positions:
        raise UsageError(f"--seq-len: {seq_len} is above the model's context of {shape.max_positions} tokens")
    strategy, world = _parallel(args, recipe)
    p = plan_input_for(recipe, shape, args.backend or recipe.model.backend, device, seq_len, args.batch_size,
                       bf16=bf16, strategy=strategy, world_size=world)
    est = estimate(shape, p)
    extra = runtime_bytes(est.peak, device)
    plan = {"model": recipe.model.name, "config": source, "model_type": shape.model_type, "params": shape.params,
            "device": gpu_name or device, "budget_bytes": budget, "input": p.__dict__ | {"target_modules":
                                                                                         list(p.target_modules)},
            "strategy": p.strategy, "world_size": p.world_size,
            "terms": est.terms, "tensor_peak_bytes": est.peak, "runtime_bytes": extra,
            "needed_bytes": est.peak + extra}
    if world > 1:  # per GPU, each way of sharing the work, so the verdict can say which fits
        plan["per_gpu"] = {}
        for name in ("ddp", "fsdp"):
            peak = estimate(shape, replace(p, strategy=name)).peak
            need = peak + runtime_bytes(peak, device)
            plan["per_gpu"][name] = {"needed_bytes": need, "fits": None if budget is None else need <= budget}
    # The other checkpointing choice, since it is the biggest lever on activations.
    other = estimate(shape, replace(p, gradient_checkpointing=not p.gradient_checkpointing)).peak
    plan["other_checkpointing"] = {"gradient_checkpointing": not p.gradient_checkpointing,
                                   "needed_bytes": other + runtime_bytes(other, device)}
    if budget:
        limit_seq = min(LIMITS["seq_len"], shape.max_positions or LIMITS["seq_len"])
        plan["fits"] = est.peak + extra <= budget
        plan["largest_seq_len"] = largest_fitting(shape, p, budget, "seq_len", limit_seq)
        plan["largest_batch_size"] = largest_fitting(shape, p, budget, "batch_size", LIMITS["batch_size"])
    return plan, p


def _parallel(args, recipe) -> tuple[str, int]:
    """(strategy, world size) to plan one GPU of: the flags, else the recipe's distributed section."""
    from qlora_kit.errors import UsageError

    d = recipe.distributed
    if args.nproc is not None and args.nproc < 1:
        raise UsageError(f"--nproc: {args.nproc} must be at least 1")
    nproc = args.nproc or (d.nproc if d.nproc != "auto" else 1)
    world = nproc * (d.nnodes if args.nproc is None else 1)
    strategy = args.strategy or (d.strategy if d.strategy != "none" or world == 1 else "ddp")
    if strategy == "none" and world > 1:
        raise UsageError(f"--strategy none is one process; --nproc {nproc} needs --strategy ddp or fsdp")
    if strategy == "fsdp" and world < 2:
        raise UsageError("--strategy fsdp shards over processes: give --nproc 2 or more")
    if strategy == "fsdp" and (args.backend or recipe.model.backend) == "unsloth":
        raise UsageError("--strategy fsdp needs the hf backend (Unsloth's NF4 weights do not work with FSDP's "
                         "fully_shard); add --backend hf, or plan --strategy ddp")
    return strategy, world


def _target(args) -> tuple[str, str | None, int | None, bool]:
    """-> (device kind, GPU name, memory budget in bytes or None, bf16 supported)."""
    from qlora_kit.errors import UsageError
    from qlora_kit.plan.gpus import GPUS, find_gpu
    from qlora_kit.sizes import parse_gpu_memory

    budget = None
    if args.gpu_mem:
        try:
            budget = parse_gpu_memory(args.gpu_mem)
        except ValueError as exc:
            raise UsageError(f"--gpu-mem: {exc}") from None
    name = (args.device or "").strip().lower()
    if name == "cpu":
        return "cpu", None, budget, False
    if name in ("", "cuda"):
        local = _local_gpu(required=name == "cuda")
        if local:
            return "cuda", local[0], budget or local[1], local[2]
        return "cuda", None, budget, True
    gpu = find_gpu(name)
    if gpu is None:
        raise UsageError(f"--device: unknown GPU {args.device!r}; known: {', '.join(GPUS)}, or give --gpu-mem SIZE")
    return "cuda", gpu.name, budget or gpu.memory, gpu.bf16


def _local_gpu(required: bool):
    from qlora_kit.errors import UsageError

    import torch

    if not torch.cuda.is_available():
        if required:
            raise UsageError("--device: cuda was asked for but no CUDA GPU is visible; name a GPU (e.g. "
                             "--device rtx4090) or give --gpu-mem SIZE")
        return None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory, torch.cuda.is_bf16_supported()


def _text(plan: dict, p) -> str:
    lines = [f"plan: {plan['model']} ({plan['model_type']}, {plan['params'] / 1e9:.2f}B params), backend {p.backend}, "
             f"{p.dtype}, batch {p.batch_size} x seq {p.seq_len}, LoRA r={p.lora_r} on {len(p.target_modules)} "
             f"modules, {p.optimizer}, gradient checkpointing {'on' if p.gradient_checkpointing else 'off'}"]
    if p.world_size > 1:
        lines.append(f"per GPU of {p.world_size} processes, {p.strategy} "
                     f"({'a full copy on each' if p.strategy == 'ddp' else 'weights and optimizer states sharded'}):")
    for name, value in plan["terms"].items():
        lines.append(f"  {name:<24} {value / GIB:8.2f} GiB")
    lines.append(f"  {'tensors at peak':<24} {plan['tensor_peak_bytes'] / GIB:8.2f} GiB")
    if p.device == "cuda":
        lines.append(f"  {'+ CUDA runtime':<24} {plan['runtime_bytes'] / GIB:8.2f} GiB (context + allocator slack)")
    alt = plan["other_checkpointing"]
    lines.append(f"  (with gradient checkpointing {'on' if alt['gradient_checkpointing'] else 'off'}: "
                 f"~{alt['needed_bytes'] / GIB:.2f} GiB)")
    if plan["budget_bytes"] is None:
        where = ("of RAM for tensors (the libraries add ~0.5 GiB); give --gpu-mem SIZE for a verdict"
                 if p.device == "cpu" else "; no GPU here: give --gpu-mem SIZE or --device NAME for a verdict")
        lines.append(f"needs ~{plan['needed_bytes'] / GIB:.2f} GiB {where}".replace(" ;", ";"))
        return "\n".join(lines)
    budget = plan["budget_bytes"] / GIB
    verdict = "fits" if plan["fits"] else "does NOT fit"
    lines.append(f"needs ~{plan['needed_bytes'] / GIB:.2f} GiB of {budget:.1f} GiB"
                 f"{' (' + plan['device'] + ')' if plan['device'] not in ('cuda', 'cpu') else ''}: {verdict}")
    for name, other in plan.get("per_gpu", {}).items():
        if name != p.strategy:
            lines.append(f"with {name} instead: ~{other['needed_bytes'] / GIB:.2f} GiB per GPU: "
                         f"{'fits' if other['fits'] else 'does NOT fit'}"
                         + (" (fsdp needs model.backend: hf)" if name == "fsdp" and p.backend == "unsloth" else ""))
    seq, batch = plan["largest_seq_len"], plan["largest_batch_size"]
    lines.append(f"largest seq_len at batch {p.batch_size}: {seq if seq else 'none fits'}; "
                 f"largest batch at seq {p.seq_len}: {batch if batch else 'none fits'}")
    return "\n".join(lines)
