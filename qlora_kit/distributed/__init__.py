"""Several processes, one recipe: DDP and FSDP-QLoRA through PyTorch's own launcher (torchrun).

- `env`: who this process is (rank, world size, node) from the variables torchrun / `accelerate launch` set, and
  which launch a recipe asks for (light: no torch import).
- `launch`: `qlora-kit train` with `distributed.nproc > 1` supervises: it starts `torch.distributed.run` in its own
  session, forwards rank 0's events, turns SIGINT/SIGTERM into one collective checkpoint, and reports the failing
  rank's one-line error. Workers started by torchrun or `accelerate launch` directly run the same code without it.
- `sync`: the collective pieces the training loop needs (a cancel every rank agrees on, barriers, per-rank memory).
- `fsdp`: the Trainer arguments of FSDP-QLoRA (FSDP2 fully_shard, decoder-layer wrapping, sharded checkpoints).
- `lastbatch`: an epoch's last, partial batch trains each row once (accelerate's repeats get no loss).

Rank 0 alone writes the run directory, events, progress, adapter and metrics; each rank writes only its own RNG
state into a checkpoint (resume needs every rank's dropout stream).
"""
