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
import yaml

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


def test_train_refuses_fsdp_without_gpus_and_bad_nproc_before_loading_anything(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", model={"backend": "hf"}, distributed={"strategy": "fsdp"},
                          train={"device": "cpu"})
    result = run_cli("train", str(recipe), "--nproc", "2")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "qlora-kit: error: distributed.strategy fsdp needs CUDA GPUs (accelerate shards with FSDP only on GPU-class "
        "devices; on cpu it would train DDP instead); use distributed.strategy: ddp here")
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
    from qlora_kit.training.rundir import RunDir

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
    from qlora_kit.training.rundir import RunDir

    run = RunDir(tmp_path / "run", writer=False)
    run.start("recipe: {}\n", resume=False, overwrite=False, info={})
    run.write_status("running")
    assert not run.root.exists()


def _tiny_shape():
    from qlora_kit.model.builtin import materialize
    from qlora_kit.planner.shape import load_config, shape_from_config

    materialize("builtin:tiny-llama")
    return shape_from_config(load_config("builtin:tiny-llama")[0])


def test_planner_per_gpu_ddp_is_a_full_copy_and_fsdp_shards_weights_and_optimizer():
    from dataclasses import replace

    from qlora_kit.planner.estimate import PlanInput, estimate

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
    from qlora_kit.training.auto import Runtime

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


def test_own_rows_describe_how_accelerate_completes_an_epochs_last_round():
    """qlora_kit.distributed.lastbatch masks labels[own_rows:] of each rank's last batch of an epoch. That relies on
    accelerate's BatchSamplerShard (even_batches, the Trainer's default): every batch full, each row of the epoch
    handed out once in round order, the repeats after them, and only in the last batch of each rank."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    from qlora_kit.distributed.lastbatch import own_rows

    for rows in range(1, 27):
        for batch_size in (1, 3, 4):
            for world in (2, 3):
                batches = BatchSampler(SequentialSampler(range(rows)), batch_size, drop_last=False)
                shards = [list(BatchSamplerShard(batches, world, rank)) for rank in range(world)]
                rounds = [[shard[k] for shard in shards] for k in range(len(shards[0]))]
                assert {len(s) for s in shards} == {len(rounds)}
                handed_out = [i for r in rounds for batch in r for i in batch]
                assert handed_out[:rows] == list(range(rows))  # each row once; everything after repeats one
                for rank, shard in enumerate(shards):
                    for k, batch in enumerate(shard):
                        start = (k * world + rank) * batch_size  # where this batch sits in handed_out
                        own = sum(start + i < rows for i in range(batch_size))
                        assert len(batch) == batch_size
                        last = k == len(shard) - 1
                        assert own == (own_rows(rows, batch_size, world, rank) if last else batch_size)


# --- real multi-process runs (CPU, gloo) ------------------------------------------------------------------------

# 18 rows of the tiny demo's data: an epoch is 3 steps of 8 rows (8, 8, 2), so 12 steps cross 3 epoch boundaries.
# On 2 processes of 4 rows the epoch's last round holds 2 rows: rank 0 gets them plus 2 repeats, rank 1 only
# repeats (accelerate completes the round; qlora_kit.distributed.lastbatch keeps them out of the loss). Dropout 0:
# the 1-process and 2-process runs then differ only in how each global batch is split.
DDP = {"model": {"backend": "hf"}, "lora": {"dropout": 0.0}, "data": {"path": "builtin:tiny-demo", "max_rows": 18},
       "train": {"max_steps": 12, "lr": 3e-3, "logging_steps": 1, "save_steps": 1000, "device": "cpu"}}
CONFIG_TERMS = ("weights_4bit", "weights_dense", "lora", "optimizer")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recipe(tmp_path: Path, name: str, batch_size: int, **distributed) -> Path:
    return write_recipe(tmp_path / f"{name}.yaml", model=DDP["model"], lora=DDP["lora"], data=DDP["data"],
                        train={**DDP["train"], "batch_size": batch_size},
                        distributed={"master_port": _port(), **distributed})


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}


def _still_running(marker: str) -> list[int]:
    """Processes (other than this one) whose command line names `marker`: none may outlive the launcher."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One process with batch 8, and `--nproc 2` with batch 4 per process: the same global batch of 8."""
    tmp = tmp_path_factory.mktemp("ddp")
    one = run_cli("train", str(_recipe(tmp, "one", 8)))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli("train", str(_recipe(tmp, "two", 4)), "--nproc", "2", "--events", str(tmp / "heard.jsonl"))
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp, two


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(ddp_runs):
    tmp, _ = ddp_runs
    one, two = step_losses(tmp / "runs" / "one"), step_losses(tmp / "runs" / "two")
    assert sorted(one) == sorted(two) == list(range(1, 13))
    # The same rows, model and optimizer: only the order of float additions differs (per-rank token sums, the
    # gradient all-reduce, 1 vs 2 threads per matmul). Measured: max |diff| 9.5e-7 over 12 steps, 4 epochs (fp32,
    # losses 6.25 -> 4.95); 1e-5 leaves 10x room for float noise, and any real difference (a rank seeing the wrong
    # rows, gradients averaged per rank rather than per token, the repeats that complete an epoch's last round
    # trained: 1.9e-2 at step 3, 0.48 by step 12) moves a loss by 1e-2 or more.
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), step
    assert two[11] < 0.8 * two[1]  # step 11: a full batch (step 12, 2 rows, is a noisier loss)


@pytest.mark.slow
def test_ddp_writes_one_run_directory_and_one_event_stream(ddp_runs):
    tmp, result = ddp_runs
    run_dir = tmp / "runs" / "two"
    events = assert_seq_without_gaps(run_dir)
    starts = [e for e in events if e["event"] == "run_start"]
    assert len(starts) == 1 and (starts[0]["world_size"], starts[0]["strategy"],
                                 starts[0]["global_batch_size"]) == (2, "ddp", 8)
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(1, 13))  # rank 0's, once each
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "complete"
    heard = (tmp / "heard.jsonl").read_text().splitlines()
    assert heard == (run_dir / "events.jsonl").read_text().splitlines()  # the launcher forwarded every event
    status = json.loads((run_dir / "run.json").read_text())
    assert (status["status"], status["world_size"], status["global_batch_size"]) == ("complete", 2, 8)
    assert "distributed: ddp, 2 process(es) here x 1 machine(s) = world size 2" in result.stdout
    assert result.stdout.count("step 12/12") == 1  # progress from rank 0 alone
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == ["adapter", "checkpoints", "events.jsonl", "metrics.json",
                                                         "recipe.yaml", "run.json"]


@pytest.mark.slow
def test_planner_per_gpu_ddp_terms_equal_what_each_rank_held(ddp_runs):
    from qlora_kit.planner.estimate import estimate
    from qlora_kit.planner.inputs import plan_input_for
    from qlora_kit.planner.shape import load_config, shape_from_config
    from qlora_kit.recipe import load_recipe

    tmp, _ = ddp_runs
    recipe = load_recipe(tmp / "runs" / "two" / "recipe.yaml")
    shape = shape_from_config(load_config(recipe.model.name)[0])
    terms = estimate(shape, plan_input_for(recipe, shape, "hf", "cpu", 128, strategy="ddp", world_size=2)).terms
    ranks = json.loads((tmp / "runs" / "two" / "metrics.json").read_text())["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    for held in ranks:  # DDP: every rank holds the full copy the planner counts per GPU
        assert {t: held[t] for t in CONFIG_TERMS} == {t: terms[t] for t in CONFIG_TERMS}


@pytest.mark.slow
def test_two_machines_on_loopback_train_the_same_run_to_the_end(ddp_runs, tmp_path):
    """nnodes=2, one process each, rendezvous on 127.0.0.1: machine 0 runs `qlora-kit train`, machine 1 runs the
    worker through torchrun directly (as a cluster script would). The same world size as `--nproc 2`, the same
    losses."""
    tmp, _ = ddp_runs
    recipe = _recipe(tmp_path, "nodes", 4, strategy="ddp", nproc=1, nnodes=2, master_addr="127.0.0.1")
    port = str(yaml.safe_load(recipe.read_text())["distributed"]["master_port"])
    node0 = [sys.executable, "-m", "qlora_kit", "train", str(recipe)]
    node1 = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", "1", "--nproc-per-node",
             "1", "--master-addr", "127.0.0.1", "--master-port", port, "-m", "qlora_kit", "train", str(recipe)]
    machines = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE) for cmd in (node0, node1)]
    results = [m.communicate(timeout=600) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    run_dir = tmp_path / "runs" / "nodes"
    start = read_events(run_dir, "run_start")[0]
    assert (start["world_size"], start["global_batch_size"]) == (2, 8)
    reference = step_losses(tmp / "runs" / "two")
    losses = step_losses(run_dir)
    assert sorted(losses) == sorted(reference)
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], abs=1e-5), step
    recorded = yaml.safe_load((run_dir / "recipe.yaml").read_text())["distributed"]
    assert (recorded["strategy"], recorded["nproc"], recorded["nnodes"]) == ("ddp", 1, 2)
    assert "distributed: ddp, 1 process(es) here x 2 machine(s)" in results[0][0]
    assert "step 12/12" not in results[1][0]  # progress comes from rank 0 alone


def _train_until(args: list[str], run_dir: Path, after_step: int, stop) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "qlora_kit", "train", *args], cwd=ROOT, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "events.jsonl").is_file() and any(e["step"] >= after_step
                                                         for e in read_events(run_dir, "step")):
            stop(proc)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_sigint_to_the_launcher_checkpoints_once_stops_every_rank_and_resume_reproduces(ddp_runs, tmp_path):
    tmp, _ = ddp_runs
    recipe = _recipe(tmp_path, "stopped", 4)
    run_dir = tmp_path / "runs" / "stopped"
    first = _train_until([str(recipe), "--nproc", "2"], run_dir, 3, lambda p: p.send_signal(signal.SIGINT))
    assert first.returncode == 130, first.stderr[-3000:]
    assert not _still_running(str(recipe)), "a rank outlived the launcher"
    status = json.loads((run_dir / "run.json").read_text())
    stopped = status["step"]
    assert status["status"] == "interrupted" and 3 <= stopped < 12
    assert [(e["step"], e["reason"], e["checkpoint"]) for e in read_events(run_dir, "cancelled")] == [
        (stopped, "SIGINT", f"checkpoints/checkpoint-{stopped}")]
    assert [p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")] == [f"checkpoint-{stopped}"]  # one
    assert sorted(p.name for p in (run_dir / "checkpoints" / f"checkpoint-{stopped}").glob("rng_state_*")) == [
        "rng_state_0.pth", "rng_state_1.pth"]
    assert "--nproc 2 --resume" in first.stdout

    other = run_cli("train", str(recipe), "--resume")  # one process cannot continue a two-process run
    assert other.returncode == 2 and "this run was trained by 2 processes (global batch 8) and would resume " \
                                      "with 1; resume it with the same world size (--nproc 2" in other.stderr

    second = run_cli("train", str(recipe), "--nproc", "2", "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    reference, losses = step_losses(tmp / "runs" / "two"), step_losses(run_dir)
    assert sorted(losses) == sorted(reference)
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], abs=1e-5), step
    assert_seq_without_gaps(run_dir)


@pytest.mark.slow
def test_a_rank_that_fails_fails_the_run_with_its_own_one_line_error(tmp_path):
    """Rank 1 cannot write its part of a checkpoint (a real I/O error in that process alone)."""
    recipe = write_recipe(tmp_path / "failing.yaml", model=DDP["model"], lora=DDP["lora"], data=DDP["data"],
                          train={**DDP["train"], "batch_size": 4, "save_steps": 4},
                          distributed={"master_port": _port()})
    run_dir = tmp_path / "runs" / "failing"
    blocker = run_dir / "checkpoints" / "checkpoint-4" / "rng_state_1.pth"
    result = _train_until([str(recipe), "--nproc", "2"], run_dir, 1,
                          lambda p: blocker.mkdir(parents=True))
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (  # torch.save's own words for it, from rank 1
        "qlora-kit: error: rank 1: training failed: RuntimeError: [enforce fail at inline_container.cc:747] . open "
        f"file failed with strerror: Is a directory (run dir: {run_dir})")
    assert "Traceback" not in result.stderr
    assert not _still_running(str(recipe)), "a rank outlived the launcher"
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("rank 1: training failed: RuntimeError")
    errors = read_events(run_dir, "error")
    assert len(errors) == 1 and errors[0]["message"].startswith("rank 1: ") and errors[0]["exit_code"] == 1
    assert read_events(run_dir)[-1]["event"] == "run_end" and read_events(run_dir)[-1]["status"] == "failed"
    assert_seq_without_gaps(run_dir)


@pytest.mark.slow
def test_unsloth_backend_trains_with_ddp(ddp_runs, tmp_path):
    recipe = write_recipe(tmp_path / "uns.yaml", lora=DDP["lora"], data=DDP["data"],
                          train={**DDP["train"], "batch_size": 4, "max_steps": 6},
                          distributed={"master_port": _port()})
    result = run_cli("train", str(recipe), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "uns"
    start = read_events(run_dir, "run_start")[0]
    assert (start["backend"], start["world_size"], start["strategy"]) == ("unsloth", 2, "ddp")
    losses = step_losses(run_dir)
    assert sorted(losses) == list(range(1, 7)) and losses[6] < losses[1]
    # Before any update, the same NF4 weights and the same global batch split the same way: hf's first loss.
    assert losses[1] == pytest.approx(step_losses(ddp_runs[0] / "runs" / "two")[1], abs=1e-3)


@pytest.mark.slow
def test_fsdp_on_cpu_shards_the_4bit_model_as_the_planner_says(tmp_path):
    """torch's FSDP2 on gloo with the FSDP-QLoRA layout (tests/fsdp_rank.py: the hf backend's strategy-fsdp load,
    fully_shard per decoder layer and root, three AdamW steps): what each rank held against the planner's per-GPU
    fsdp terms. (The Trainer path itself needs CUDA: accelerate enables FSDP only for GPU-class devices.)"""
    from qlora_kit.planner.estimate import PlanInput, estimate

    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                             str(_port()), str(ROOT / "tests" / "fsdp_rank.py"), str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["losses"] == ranks[1]["losses"] and ranks[0]["losses"][2] < ranks[0]["losses"][0]
    shape = _tiny_shape()
    p = PlanInput(backend="hf", device="cpu", dtype="float32", batch_size=2, seq_len=64, lora_r=16,
                  target_modules=tuple(lin.name for lin in shape.layer_linears), lora_dropout=0.0,
                  optimizer="adamw_torch", gradient_checkpointing=False, strategy="fsdp", world_size=2)
    terms = estimate(shape, p).terms
    full = estimate(shape, PlanInput(**{**p.__dict__, "strategy": "none", "world_size": 1})).terms
    for rank in ranks:
        held = rank["held"]
        # Exact here (measured: 4-bit 328,920 B, other weights 526,848, LoRA 262,144, AdamW 524,400 per rank).
        assert {t: held[t] for t in CONFIG_TERMS} == {t: terms[t] for t in CONFIG_TERMS}, rank["rank"]
        assert held["lora"] == full["lora"] // 2 and held["optimizer"] < full["optimizer"]  # DDP holds it all


def test_the_in_process_api_refuses_a_multi_process_recipe_and_names_qk_start(tmp_path):
    import qlora_kit as qk

    recipe = write_recipe(tmp_path / "r.yaml", distributed={"strategy": "ddp", "nproc": 2}, train={"device": "cpu"})
    with pytest.raises(qk.QKError) as err:
        qk.train(recipe, plugins=False)
    assert str(err.value) == ("distributed: a run on several processes cannot start inside this process; use "
                              "qk.start(recipe) (a child `qlora-kit train` that launches torchrun) or the CLI")
    assert err.value.exit_code == 2 and not (tmp_path / "runs").exists()
