"""The plan stage: will this recipe fit, from the model's config.json alone (no weights loaded).

`run_plan` puts the pieces together: the target (a GPU by name, this machine's, or a memory budget), the
processes that share the work, the estimate (plan/estimate.py) for the recipe's train.method (planner/methods.py),
and the largest sequence and batch that fit.
"""

from __future__ import annotations

from dataclasses import replace

from qlora_kit.errors import UsageError
from qlora_kit.planner.estimate import PlanInput, estimate, largest_fitting, runtime_bytes
from qlora_kit.planner.inputs import plan_input_for
from qlora_kit.planner.grpo import describe_grpo
from qlora_kit.planner.methods import describe, runs
from qlora_kit.planner.shape import load_config, shape_from_config
from qlora_kit.recipe.options import PlanOptions
from qlora_kit.recipe.schema import Recipe

# The search for the largest sequence and batch stops at these.
LIMITS = {"seq_len": 131072, "batch_size": 1024}


def run_plan(recipe: Recipe, options: PlanOptions) -> tuple[dict, PlanInput]:
    """The plan stage (qk.plan, `qlora-kit plan`): the plan as a dict (what --json prints; qk.plan returns it
    typed) and the planner's input."""
    device, gpu_name, budget, bf16 = _target(options)
    config, source = load_config(recipe.model.name, recipe.model.revision)
    shape = shape_from_config(config)
    seq_len = options.seq_len or recipe.model.max_seq_length
    if shape.max_positions and seq_len > shape.max_positions:
        raise UsageError(f"--seq-len: {seq_len} is above the model's context of {shape.max_positions} tokens")
    strategy, world = _parallel(options, recipe)
    p = plan_input_for(recipe, shape, options.backend or recipe.model.backend, device, seq_len, options.batch_size,
                       bf16=bf16, strategy=strategy, world_size=world)
    est = estimate(shape, p)
    extra = runtime_bytes(est.peak, device)
    plan = {"model": recipe.model.name, "config": source, "model_type": shape.model_type, "params": shape.params,
            "device": gpu_name or device, "budget_bytes": budget, "input": p.__dict__ | {"target_modules":
                                                                                         list(p.target_modules)},
            "method": p.method, "sequences_per_row": runs(p.method).grad_sequences,
            "reference_forward": p.kl_reference if p.method == "grpo" else
            bool(runs(p.method, p.precompute_ref).reference_batch),
            "counted": describe_grpo(p, est.phases) if p.method == "grpo" else describe(p.method, p.precompute_ref),
            "strategy": p.strategy, "world_size": p.world_size,
            "terms": est.terms, "tensor_peak_bytes": est.peak, "runtime_bytes": extra,
            "needed_bytes": est.peak + extra}
    if est.phases:  # grpo: each phase's bytes above the held terms (the step peaks in the largest)
        plan["phases"] = est.phases
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


def _parallel(options: PlanOptions, recipe: Recipe) -> tuple[str, int]:
    """(strategy, world size) to plan one GPU of: the flags, else the recipe's distributed section."""
    d = recipe.distributed
    nproc = options.nproc or (d.nproc if d.nproc != "auto" else 1)
    world = nproc * (d.nnodes if options.nproc is None else 1)
    strategy = options.strategy or (d.strategy if d.strategy != "none" or world == 1 else "ddp")
    if strategy == "none" and world > 1:
        raise UsageError(f"--strategy none is one process; --nproc {nproc} needs --strategy ddp or fsdp")
    if strategy == "fsdp" and world < 2:
        raise UsageError("--strategy fsdp shards over processes: give --nproc 2 or more")
    if strategy == "fsdp" and (options.backend or recipe.model.backend) == "unsloth":
        raise UsageError("--strategy fsdp needs the hf backend (Unsloth's NF4 weights do not work with FSDP's "
                         "fully_shard); add --backend hf, or plan --strategy ddp")
    return strategy, world


def _target(options: PlanOptions) -> tuple[str, str | None, int | None, bool]:
    """-> (device kind, GPU name, memory budget in bytes or None, bf16 supported)."""
    from qlora_kit.planner.gpus import find_gpu
    from qlora_kit.recipe.sizes import parse_gpu_memory

    budget = parse_gpu_memory(options.gpu_mem) if options.gpu_mem else None  # checked by PlanOptions
    if options.gpu:  # a known GPU, not with device cpu: checked by PlanOptions
        gpu = find_gpu(options.gpu)
        return "cuda", gpu.name, budget or gpu.memory, gpu.bf16
    if options.device == "cpu":
        return "cpu", None, budget, False
    local = _local_gpu(required=options.device == "cuda")
    if local:
        return "cuda", local[0], budget or local[1], local[2]
    return "cuda", None, budget, True


def _local_gpu(required: bool):
    import torch

    if not torch.cuda.is_available():
        if required:
            raise UsageError("--device: cuda was asked for but no CUDA GPU is visible; name a GPU (e.g. "
                             "--gpu rtx4090) or give --gpu-mem SIZE")
        return None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory, torch.cuda.is_bf16_supported()
