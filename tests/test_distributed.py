"""Several processes, one recipe (qlora_kit.distributed): the `distributed:` section and its refusals, the launcher
environment, the planner's per-GPU numbers, and real multi-process runs on CPU (gloo): DDP against one process with
the same global batch, two "machines" on 127.0.0.1, SIGINT to the launcher and resume, a rank that fails.

Multi-process runs use the hf backend (no 15 s Unsloth import per process) and share runs between assertions."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, assert_seq_without_gaps, read_events, run_cli, step_losses, write_recipe

# --- unit: recipe, environment, launch command, planner (no training) -----------------------------------------


@pytest.mark.parametrize("sections, message", [
    ({"distributed": {"strategy": "fsdp", "nproc": 2}},
     "distributed.strategy fsdp needs model.backend: hf (Unsloth's NF4 weights do not work with FSDP's fully_shard); "
     "use strategy: ddp with unsloth, or model.backend: hf"),
    ({"model": {"backend": "hf"}, "distributed": {"strategy": "fsdp", "nproc": 1}},
     "distributed: {'strategy': 'fsdp', 'nproc': 1}: distributed.strategy fsdp shards the model across processes "
     "and needs at least 2; set distributed.nproc: 2 or more, or strategy: none"),
    ({"distributed": {"nproc": 2}},
     "distributed: {'nproc': 2}: several processes need distributed.strategy: ddp or fsdp (strategy none is one "
     "process); set distributed.strategy: ddp"),
    ({"distributed": {"strategy": "ddp", "nnodes": 2, "node_rank": 2}},
     "distributed: {'strategy': 'ddp', 'nnodes': 2, 'node_rank': 2}: distributed.node_rank 2 must be below "
     "distributed.nnodes (2); machines are numbered 0 .. 1"),
    ({"distributed": {"strategy": "dp"}},
     "distributed.strategy: 'dp' is not allowed; choose one of: none, ddp, fsdp (did you mean 'ddp'?)"),
    ({"distributed": {"nproc": 0, "strategy": "ddp"}},
     "distributed.nproc: 0: must be a positive integer or 'auto'"),
])
def test_distributed_section_refuses_what_cannot_work_in_one_line(tmp_path, sections, message):
    recipe = write_recipe(tmp_path / "r.yaml", **sections)
    result = run_cli("validate", str(recipe))
    assert result.returncode == 2
    assert result.stderr.strip() == f"qlora-kit: error: {recipe}: {message}"


def test_train_refuses_fsdp_on_one_process_and_bad_nproc_before_loading_anything(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", model={"backend": "hf"}, distributed={"strategy": "fsdp"},
                          train={"device": "cpu"})
    result = run_cli("train", str(recipe))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "qlora-kit: error: distributed.strategy fsdp needs at least 2 processes, and nproc auto found one (no second "
        "GPU is visible); set distributed.nproc (or --nproc) to 2 or more, or use strategy: none")
    result = run_cli("train", str(recipe), "--nproc", "0")
    assert (result.returncode, result.stderr.strip()) == (2, "qlora-kit: error: --nproc: 0 must be at least 1")
    assert not (tmp_path / "runs").exists()


def test_launcher_environment_is_read_and_a_bad_one_is_one_line():
    from qlora_kit.distributed.env import DistEnv, current
    from qlora_kit.errors import UsageError

    assert current({}) == DistEnv()
    env = current({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.node_rank, env.active, env.is_main) == (3, 4, 1, 1, True,
                                                                                                  False)
    with pytest.raises(UsageError, match=r"environment variable RANK='x' is not an integer"):
        current({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="RANK=2 and WORLD_SIZE=2 do not describe a process of the run"):
        current({"RANK": "2", "WORLD_SIZE": "2"})


def test_nproc_flag_is_the_short_form_and_torchrun_gets_a_static_rendezvous(tmp_path):
    from qlora_kit.cli.train import nproc_overrides
    from qlora_kit.distributed.env import plan_launch
    from qlora_kit.distributed.launch import torchrun_command
    from qlora_kit.recipe import load_recipe

    path = write_recipe(tmp_path / "r.yaml", train={"device": "cpu"})
    overrides = nproc_overrides(str(path), ["train.lr=0.01"], 2)
    assert overrides == ["train.lr=0.01", "distributed.nproc=2", "distributed.strategy=ddp"]
    launch = plan_launch(load_recipe(path, overrides))
    assert (launch.strategy, launch.nproc, launch.world_size) == ("ddp", 2, 2)
    assert plan_launch(load_recipe(path, nproc_overrides(str(path), [], 1))) is None  # one process: no torchrun
    two_nodes = load_recipe(path, ["distributed.strategy=ddp", "distributed.nproc=1", "distributed.nnodes=2",
                                   "distributed.node_rank=1", "distributed.master_addr=10.0.0.5",
                                   "distributed.master_port=29600"])
    cmd = torchrun_command(plan_launch(two_nodes), str(path), ["--no-plugins"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "1", "--nproc-per-node", "1",
                       "--master-addr", "10.0.0.5", "--master-port", "29600", "--max-restarts", "0", "-m",
                       "qlora_kit", "train", str(path), "--no-plugins"]


def test_resume_with_another_world_size_says_so(tmp_path):
    from qlora_kit.errors import UsageError
    from qlora_kit.train.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.write_status("interrupted", world_size=2, global_batch_size=8)
    run.check_world_size(2)
    with pytest.raises(UsageError) as err:
        run.check_world_size(1)
    assert str(err.value) == (f"{run.root}: this run was trained by 2 processes (global batch 8) and would resume "
                              "with 1; resume it with the same world size (--nproc 2, or the same distributed.nproc "
                              "x nnodes), or start a new run with --set output.name=NEW_NAME")


def test_a_non_main_rank_never_writes_the_run_directory(tmp_path):
    from qlora_kit.train.rundir import RunDir

    run = RunDir(tmp_path / "run", writer=False)
    run.start("recipe: {}\n", resume=False, overwrite=False, info={})
    run.write_status("running")
    assert not run.root.exists()


def _tiny_shape():
    from qlora_kit.model.builtin import materialize
    from qlora_kit.plan.shape import load_config, shape_from_config

    materialize("builtin:tiny-llama")
    return shape_from_config(load_config("builtin:tiny-llama")[0])


def test_planner_per_gpu_ddp_is_a_full_copy_and_fsdp_shards_weights_and_optimizer():
    from dataclasses import replace

    from qlora_kit.plan.estimate import PlanInput, estimate

    shape = _tiny_shape()
    one = PlanInput(backend="hf", device="cuda", dtype="bfloat16", batch_size=2, seq_len=128, lora_r=16,
                    target_modules=tuple(lin.name for lin in shape.layer_linears), lora_dropout=0.0,
                    optimizer="adamw_torch", gradient_checkpointing=True)
    single = estimate(shape, one).terms
    ddp = estimate(shape, replace(one, strategy="ddp", world_size=4)).terms
    fsdp = estimate(shape, replace(one, strategy="fsdp", world_size=4)).terms
    assert {k: v for k, v in ddp.items() if k != "ddp_gradient_buckets"} == single
    assert ddp["ddp_gradient_buckets"] == single["lora"]
    for term in ("weights_dense", "lora", "optimizer"):
        assert fsdp[term] == pytest.approx(single[term] / 4, rel=0.01), term
    # The packed 4-bit bytes shard; the quantization state (absmax, code tables) stays whole on every rank.
    packed = shape.layers * sum((lin.numel + 1) // 2 for lin in shape.layer_linears)
    assert fsdp["weights_4bit"] == single["weights_4bit"] - packed + packed // 4
    assert fsdp["fsdp_unsharded_layers"] > 0 and fsdp["activations"] == single["activations"]


def test_plan_cli_reports_per_gpu_memory_for_ddp_and_fsdp(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", model={"backend": "hf"})
    r = run_cli("plan", str(recipe), "--nproc", "2", "--strategy", "fsdp", "--gpu-mem", "1GiB", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert (plan["strategy"], plan["world_size"]) == ("fsdp", 2)
    assert plan["per_gpu"]["fsdp"]["needed_bytes"] == plan["needed_bytes"]
    assert plan["per_gpu"]["ddp"]["needed_bytes"] > plan["needed_bytes"]
    assert plan["per_gpu"]["ddp"]["fits"] is True
    text = run_cli("plan", str(recipe), "--nproc", "2", "--gpu-mem", "1GiB").stdout
    assert "per GPU of 2 processes, ddp (a full copy on each):" in text and "with fsdp instead: ~" in text
    bad = run_cli("plan", str(recipe), "--nproc", "2", "--strategy", "fsdp", "--backend", "unsloth")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "qlora-kit: error: --strategy fsdp needs the hf backend (Unsloth's NF4 weights do not work with FSDP's "
        "fully_shard); add --backend hf, or plan --strategy ddp")


def test_fsdp_configuration_wraps_decoder_layers_and_stores_4bit_weights_in_the_compute_dtype(tiny_model_dir):
    """What FSDP-QLoRA hands the Trainer and bitsandbytes (the run itself needs GPUs: see test_fsdp_on_cpu_*)."""
    import torch

    from qlora_kit.distributed.fsdp import trainer_args
    from qlora_kit.model.backends import get_backend
    from qlora_kit.recipe.schema import LoraSection, ModelSection
    from qlora_kit.train.auto import Runtime

    rt = Runtime(device="cpu", dtype="float32", gradient_checkpointing=False, seed=1, strategy="fsdp")
    model, _ = get_backend("hf").load(str(tiny_model_dir), ModelSection(name="x", backend="hf"), LoraSection(), rt)
    four_bit = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert four_bit and {m.weight.dtype for m in four_bit} == {torch.float32}  # bnb_4bit_quant_storage
    assert model.config.quantization_config.bnb_4bit_quant_storage == torch.float32
    args = trainer_args(model, gradient_checkpointing=True)
    assert args["fsdp"] == "full_shard auto_wrap"
    assert args["fsdp_config"] == {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                   "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                   "reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT",
                                   "cpu_ram_efficient_loading": False, "activation_checkpointing": True}
