"""One rank of an FSDP2-sharded QLoRA model on CPU (gloo), for tests/test_distributed.py: run by torchrun.

    python -m torch.distributed.run --nproc-per-node 2 tests/fsdp_rank.py OUT_DIR

The model is loaded exactly as `strategy: fsdp` loads it (hf backend: 4-bit weights stored in the compute dtype),
then sharded the way accelerate's FSDP2 path shards it (fully_shard on every decoder layer, then on the root), and
trained for three AdamW steps on the same rows on every run. Each rank writes what it held (in the planner's terms)
and the losses to OUT_DIR/rank-N.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from qlora_kit.benchmark.tensors import held_bytes
    from qlora_kit.model.backends import get_backend
    from qlora_kit.model.builtin import materialize
    from qlora_kit.recipe.schema import LoraSection, ModelSection
    from qlora_kit.training.auto import Runtime

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rt = Runtime(device="cpu", dtype="float32", gradient_checkpointing=False, seed=7, strategy="fsdp")
    model, _ = get_backend("hf").load(str(materialize("builtin:tiny-llama")), ModelSection(name="x", backend="hf"),
                                      LoraSection(r=16, alpha=32), rt)
    for layer in model.get_base_model().model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    rows = torch.Generator().manual_seed(0)
    batch = torch.randint(4, 500, (4, 64), generator=rows)
    mine = batch[rank * 2:(rank + 1) * 2]  # each rank its half of the global batch
    losses = []
    for _ in range(3):
        loss = model(input_ids=mine, labels=mine).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / dist.get_world_size())
    held = held_bytes(model, optimizer)
    (out / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "held": held, "losses": losses}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
