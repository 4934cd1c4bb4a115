"""`qlora-kit merge`: LoRA adapter + base checkpoint -> a plain 16/32-bit model in RUN_DIR/merged/.

Two merge bases:
  dequantized (default)  dequant(NF4(W)) + s*B@A: the weights the adapter was actually trained against, so the
                         merged model reproduces the model you trained and evaluated (the loss you saw).
                         Every 4-bit layer gets the NF4 round trip, LoRA target or not.
  original               W + s*B@A: the 16-bit weights the run started from. Closer to the unquantized base,
                         but the adapter never saw them; the report shows how far that moves the outputs.
Why dequantized by default: "the fine-tune got worse after merging" is mostly this mismatch.

Streaming: tensors are read one at a time from memory-mapped safetensors, merged, and written straight into
pre-planned shards; nothing is written to the final directory until everything (and the fidelity check) is done.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from qlora_kit.errors import QKError, StageError, UsageError
from qlora_kit.merging.adapter import load_adapter
from qlora_kit.runtime.compat import return_large_frees_to_the_os
from qlora_kit.merging.checkpoint import Checkpoint, nf4_roundtrip, nf4_roundtrip_blocks, row_blocks
from qlora_kit.merging.writer import PlannedTensor, ShardWriter, plan_shards, write_index
from qlora_kit.recipe.options import MergeOptions

OUT_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
              "fp32": torch.float32, "float32": torch.float32}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
DISK_MARGIN = 1.05  # headroom for headers, config and the report


# float32 bytes of one block of rows (see merged_blocks): bounds the merge's working memory per tensor.
BLOCK_BYTES = 16 * 2**20


def quantized_linear_names(config: dict) -> set[str]:
    """Weights transformers stores in 4-bit when loading this architecture: every nn.Linear except the output
    head. Found by building the model on the meta device (no memory, no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "quantization_config"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    head = model.get_output_embeddings()
    return {f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head}


def merge_weights(ckpt: Checkpoint, adapter, out: Path, options: MergeOptions, train_dtype: torch.dtype,
                  out_dtype: torch.dtype, block_bytes: int = BLOCK_BYTES) -> dict:
    """Write the merged tensors into `out` (an empty directory). Returns facts for the report."""
    return_large_frees_to_the_os()
    names = ckpt.names()
    shapes = {n: ckpt.shape(n) for n in names}
    adapter.check_fits(shapes)
    quantized = quantized_linear_names(ckpt.config) if not ckpt.prequantized else set()
    planned = [PlannedTensor(n, shapes[n], out_dtype if ckpt.dtype(n).is_floating_point else ckpt.dtype(n))
               for n in names]
    shards = plan_shards(planned, options.max_shard_bytes)
    _check_disk(out, sum(s.nbytes for s in shards))
    roundtripped = 0
    for shard in shards:
        writer = ShardWriter(out, shard)
        for t in shard.tensors:
            nf4 = train_dtype if options.base == "dequantized" and t.name in quantized else None
            writer.write_blocks(t.name, merged_blocks(ckpt, adapter, t.name, nf4, t.dtype, block_bytes))
            roundtripped += nf4 is not None
        writer.close()
    write_index(out, shards)
    return {"tensors": len(names), "shards": len(shards), "bytes": sum(s.nbytes for s in shards),
            "nf4_roundtripped": roundtripped, "lora_merged": len(adapter.linear) + len(adapter.embedding),
            "replaced": len(adapter.full)}


def merged_blocks(ckpt: Checkpoint, adapter, name: str, nf4: torch.dtype | None, out_dtype: torch.dtype,
                  block_bytes: int):
    """The merged tensor `name` in `out_dtype`, a block of rows at a time (read with positioned reads, NF4 round
    trip, LoRA update, cast): memory is a block, never a whole-tensor float32 copy. Every step is row-local (the
    NF4 round trip in two passes), so the blocks are bit-identical to merging the whole tensor."""
    shape = ckpt.shape(name)
    row = 1
    for d in shape[1:]:
        row *= d
    if ckpt.is_quantized(name) or len(shape) < 2 or (nf4 is not None and row % 64):
        tensor = ckpt.get(name)  # 4-bit packed storage, a vector, or an NF4 round trip that needs the whole tensor
        if nf4 is not None:
            tensor = nf4_roundtrip(tensor, nf4)
        yield (adapter.apply(name, tensor) if adapter.touches(name) else tensor).to(out_dtype)
        return
    # 64-row multiples: BLAS picks other kernels (summation orders) for thin blocks; NF4 blocks are 64 values.
    blocks = list(row_blocks(shape[0], row, block_bytes, unit=64))
    source = nf4_roundtrip_blocks(lambda a, b: ckpt.read_rows(name, a, b), shape, nf4, blocks) if nf4 is not None \
        else (ckpt.read_rows(name, a, b) for a, b in blocks)
    for (start, stop), block in zip(blocks, source):
        if adapter.touches(name):
            block = adapter.apply_rows(name, block, start, stop)
        yield block.to(out_dtype)
        del block


def check_tied(ckpt: Checkpoint, adapter) -> None:
    """Checked before any tensor is written: a trained embedding or head no longer equals its tied twin, and
    transformers/llama.cpp would re-tie them on load."""
    changed = [*adapter.linear, *adapter.embedding, *adapter.full]
    if ckpt.config.get("tie_word_embeddings") and any(n.endswith(("embed_tokens.weight", "lm_head.weight"))
                                                       for n in changed):
        raise UsageError("the adapter changes a tied embedding/output head; merging it would untie them, which is "
                         "not supported yet (train without embed_tokens/lm_head in lora.target_modules)")


def write_model_files(ckpt: Checkpoint, adapter_dir: Path, out: Path, out_dtype: torch.dtype) -> None:
    config = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    config["dtype"] = str(out_dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("generation_config.json",):
        if (ckpt.path / name).is_file():
            shutil.copy2(ckpt.path / name, out / name)
    for name in TOKENIZER_FILES:  # the tokenizer saved with the adapter carries the chat template used in training
        source = adapter_dir / name if (adapter_dir / name).is_file() else ckpt.path / name
        if source.is_file():
            shutil.copy2(source, out / name)


def resolve_out_dtype(name: str, ckpt: Checkpoint) -> torch.dtype:
    if name != "auto":
        return OUT_DTYPES[name]
    if ckpt.prequantized:
        return torch.bfloat16
    floats = [ckpt.dtype(n) for n in ckpt.names() if ckpt.dtype(n).is_floating_point]
    return max(set(floats), key=floats.count) if floats else torch.float32


def _check_disk(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out).free
    if free < needed * DISK_MARGIN:
        raise StageError(f"not enough disk space at {out.parent}: the merged model needs {needed / 2**30:.2f} GiB, "
                         f"{free / 2**30:.2f} GiB free; free some space or pass --out DIR on another disk")


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise UsageError(f"{out} already exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    os.replace(tmp, out)


def temp_dir_for(out: Path) -> Path:
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(f"--out: cannot write {out.parent}: {exc.strerror or exc}") from None
    return tmp


def load_adapter_checked(adapter_dir: Path):
    try:
        return load_adapter(adapter_dir)
    except QKError:
        raise
    except Exception as exc:  # a corrupt safetensors file, unreadable JSON
        raise UsageError(f"{adapter_dir}: cannot read the adapter: {exc}") from None
