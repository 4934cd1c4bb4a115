"""`qlora-kit plan RECIPE [--gpu NAME] [--gpu-mem 24GiB] [--device auto|cpu|cuda]`: will this recipe fit, from the
config alone."""

from __future__ import annotations

import json
from qlora_kit.cli.common import add_recipe_args

GIB = 2**30


def register(subparsers, common) -> None:
    from qlora_kit.cli.options import add_option_flags
    from qlora_kit.recipe.options import PlanOptions

    p = subparsers.add_parser(
        "plan", parents=[common], help="predict peak training memory and whether it fits (loads no weights)",
        description="Predict the peak GPU memory of training this recipe from the model's config.json alone "
                    "(4-bit weights, 16-bit embeddings and head, LoRA weights, gradients and optimizer states, "
                    "activations, logits, runtime overhead) for its train.method (dpo, orpo, simpo: two sequences "
                    "a row; dpo, kto: the reference forward), say whether it fits, and find the longest sequence "
                    "and the largest batch that do. A Hub model's config.json is fetched; nothing else is.")
    add_recipe_args(p)
    add_option_flags(p, PlanOptions)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.cli.options import given_options
    from qlora_kit.planner.make import run_plan
    from qlora_kit.recipe import load_recipe
    from qlora_kit.recipe.options import PlanOptions, make_options

    recipe = load_recipe(args.recipe, args.overrides)
    plan, p = run_plan(recipe, make_options(PlanOptions, given_options(args, PlanOptions)))
    print(json.dumps(plan, indent=2) if args.json else _text(plan, p))
    return 0


def _text(plan: dict, p) -> str:
    lines = [f"plan: {plan['model']} ({plan['model_type']}, {plan['params'] / 1e9:.2f}B params), backend {p.backend}, "
             f"{p.dtype}, batch {p.batch_size} x seq {p.seq_len}, LoRA r={p.lora_r} on {len(p.target_modules)} "
             f"modules, {p.optimizer}, gradient checkpointing {'on' if p.gradient_checkpointing else 'off'}",
             f"method {plan['counted']}"]
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
                 if p.device == "cpu" else "; no GPU here: give --gpu-mem SIZE or --gpu NAME for a verdict")
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
