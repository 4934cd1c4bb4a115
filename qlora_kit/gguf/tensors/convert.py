"""Merged HF checkpoint -> GGUF, streamed tensor by tensor and row block by row block (peak memory ~ a few row
blocks, not the model or its largest matrix).

F32/F16/BF16/Q8_0 are encoded with the `gguf` package. K-quant and Q4_0 files are a per-tensor mixture of types
chosen as llama.cpp chooses them (quant_policy.py) and encoded by ggml's own quantizer (ggml_quant.py), a row
block at a time: the same bytes `llama_model_quantize` writes from an F32/F16/BF16 GGUF, without that intermediate
file or llama.cpp's whole-tensor float32 buffers. No compiler, no network, no converter script at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qlora_kit.runtime.compat import return_large_frees_to_the_os
from qlora_kit.errors import StageError, UsageError
from qlora_kit.gguf.tensors.archs import ARCHS, common_kv, permute_for_llama_cpp
from qlora_kit.gguf.tensors.quants import NEEDS_IMATRIX, QUANT_TYPES, QuantType, get_quant_type  # noqa: F401
from qlora_kit.gguf.vocab.vocab import add_vocab
from qlora_kit.merging.checkpoint import Checkpoint, row_blocks


NUMPY_TYPES = {"F32": np.float32, "F16": np.float16}  # GGML types numpy can hold directly


def _ggml_type(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name]


def tensor_type(name: str, shape: tuple[int, ...], target: str) -> str:
    """1-D tensors and norms stay F32 (llama.cpp expects it); Q8_0 needs rows divisible by 32, else F16."""
    if len(shape) < 2 or name.endswith("norm.weight"):
        return "F32"
    if target == "Q8_0" and shape[-1] % 32:
        return "F16"
    return target


# fp32 working set of one row block (read, transformed and encoded, then written and freed). Peak memory of a
# conversion is a few blocks, whatever the size of the model's largest matrix (a 152k x 4096 embedding is 2.4 GiB
# in fp32). Larger blocks are not faster: the encoders work row by row anyway.
BLOCK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class PlannedTensor:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    kind: str  # GGML type written
    unit: int = 1  # rows per indivisible group (one head for the Q/K un-permute)
    ggml: bool = False  # encoded by ggml's quantizer: a type llama.cpp's K-quant policy chose


def write_gguf(model_dir: Path, out_path: Path, ggml_target: str, file_type: int, name: str,
               block_bytes: int = BLOCK_BYTES, mixture: str | None = None) -> dict:
    """Write `out_path` tensor by tensor and row block by row block: no tensor is ever held whole. With
    `mixture` (a K-quant or q4_0 name), the tensors llama.cpp quantizes get the types its policy gives them, and
    the rest are written as `ggml_target` (the model's own precision, as in the GGUF llama.cpp would start from)."""
    import gguf

    from qlora_kit.gguf.gguf_writer import GGUFWriter
    from qlora_kit.native.crash import note

    note(doing="ggml was writing", file=str(out_path))
    return_large_frees_to_the_os()  # block-sized buffers come and go one after another (see qlora_kit.runtime.memory)
    ckpt = Checkpoint(model_dir)
    arch = _arch_of(ckpt, model_dir)
    plan = plan_tensors(ckpt, arch, ggml_target, mixture)
    extra = arch.extra_tensors(ckpt.config)
    writer = GGUFWriter(str(out_path), arch.gguf_arch)
    vocab = _write_metadata(writer, ckpt, arch, model_dir, file_type, name)
    for t in plan:
        kind = _ggml_type(t.kind)
        if t.kind in NUMPY_TYPES:
            dtype = np.dtype(NUMPY_TYPES[t.kind])
            writer.add_tensor_info(t.gguf_name, t.shape, dtype, _numel(t.shape) * dtype.itemsize)
        else:  # BF16 and quantized types are written as raw bytes in their block layout
            byte_shape = gguf.quant_shape_to_byte_shape(t.shape, kind)
            writer.add_tensor_info(t.gguf_name, byte_shape, np.dtype(np.uint8), _numel(byte_shape), raw_dtype=kind)
    for gguf_name, data in extra.items():
        writer.add_tensor_info(gguf_name, data.shape, data.dtype, data.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    alignment = writer.data_alignment
    writer.close()
    del writer  # its token list and merges (tens of MiB for a 150k vocabulary) are in the file now
    # Measured and left out: encoding the next block in a thread while this one is written (no gain on 2 cores:
    # ggml's quantizer already uses every core; +32 MiB of blocks in flight for F32).
    with open(out_path, "r+b") as fh:
        fh.seek(0, 2)
        for t in plan:
            _write_aligned(fh, alignment, lambda t=t: _encoded_blocks(ckpt, t, arch, block_bytes),
                           _tensor_nbytes(t))
        for data in extra.values():
            _write_aligned(fh, alignment, lambda data=data: iter([data]), data.nbytes)
    types: dict[str, int] = {}
    for t in plan:
        types[t.kind] = types.get(t.kind, 0) + 1
    facts = {"architecture": arch.gguf_arch, "tensors": len(plan) + len(extra), "tensor_types": types, **vocab}
    if mixture:
        facts["fallbacks"] = fallbacks(plan, mixture)
    return facts


def fallbacks(plan: list[PlannedTensor], mixture: str) -> list[dict]:
    """K-quant super-blocks span 256 values of a row: llama.cpp stores tensors whose rows are not a multiple of
    256 wide in another type (Q4_0, Q5_0, Q5_1, Q8_0 or F16). List them, so a user sees why a file is bigger."""
    from qlora_kit.gguf.tensors.quant_policy import DEFAULT, block_size

    if block_size(DEFAULT[mixture]) != 256:
        return []
    return [{"tensor": t.gguf_name, "row_width": int(t.shape[-1]), "type": t.kind}
            for t in plan if t.ggml and t.shape[-1] % 256]


def _arch_of(ckpt: Checkpoint, model_dir: Path):
    if ckpt.prequantized:
        raise UsageError(f"{model_dir}: a bitsandbytes 4-bit checkpoint cannot be converted (its tensors are packed "
                         "NF4 blocks); merge into 16-bit weights first: qlora-kit merge RUN_DIR")
    arch_name = (ckpt.config.get("architectures") or ["?"])[0]
    if arch_name not in ARCHS:
        raise UsageError(f"{model_dir}: architecture {arch_name} is not supported for GGUF export; supported: "
                         f"{ARCHS.choices()}")
    return ARCHS[arch_name]


def plan_tensors(ckpt: Checkpoint, arch, ggml_target: str, mixture: str | None = None) -> list[PlannedTensor]:
    """Every checkpoint tensor with its GGUF name, type and row grouping; a tensor that does not map is an error
    (never dropped silently)."""
    import gguf

    config = ckpt.config
    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf_arch)
    name_map = gguf.get_tensor_name_map(model_arch, config["num_hidden_layers"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    plan = []
    for hf_name in ckpt.names():
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UsageError(f"{ckpt.path}: cannot map tensor {hf_name} to a GGUF name for {arch.gguf_arch}")
        shape = ckpt.shape(hf_name)
        unit = 1
        if arch.permute_qk and (".self_attn.q_proj." in hf_name or ".self_attn.k_proj." in hf_name):
            unit = shape[0] // (heads if ".q_proj." in hf_name else kv_heads)  # the un-permute stays within a head
        plan.append(PlannedTensor(hf_name, gguf_name, shape, tensor_type(gguf_name, shape, ggml_target), unit))
    if mixture:
        from qlora_kit.gguf.tensors.quant_policy import tensor_types

        chosen = tensor_types({t.gguf_name: t.shape for t in plan}, mixture, arch.gguf_arch, config)
        plan = [replace(t, kind=chosen[t.gguf_name], ggml=True) if t.gguf_name in chosen else t for t in plan]
    return plan


def _write_metadata(writer, ckpt: Checkpoint, arch, model_dir: Path, file_type: int, name: str) -> dict:
    import gguf

    from qlora_kit.gguf.vocab.vocab import llama_cpp_name

    name = llama_cpp_name(model_dir, name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    common_kv(writer, ckpt.config, arch.gguf_arch)
    if arch.extra_kv:
        arch.extra_kv(writer, ckpt.config)
    return add_vocab(writer, model_dir, ckpt.config["vocab_size"], space_prefix=arch.space_prefix, name=name)


def _encoded_blocks(ckpt: Checkpoint, t: PlannedTensor, arch, block_bytes: int):
    """The tensor's GGUF bytes, one row block at a time. Every step is row-local, so the concatenation is
    byte-identical to encoding the whole tensor: F16/BF16 round each value on its own, Q8_0 quantizes 32-value
    blocks within a row, and the Q/K un-permute moves rows within a head (blocks hold whole heads)."""
    import torch

    from qlora_kit.gguf.tensors.ggml_quant import quantize_rows

    rows = t.shape[0] if t.shape else 1
    for start, stop in row_blocks(rows, _numel(t.shape[1:]), block_bytes, t.unit):
        data = ckpt.read_rows(t.hf_name, start, stop) if t.shape else ckpt.get(t.hf_name)
        if t.unit > 1:
            data = permute_for_llama_cpp(data, (stop - start) // t.unit)
        if arch.norm_shift and t.hf_name.endswith("norm.weight"):
            data = data.float() + arch.norm_shift
        if t.ggml:
            yield quantize_rows(data.float().numpy(), t.kind, t.gguf_name)
        elif t.kind == "F16":  # torch's vectorized cast: numpy's float32 -> float16 cast is ~3x slower; both round
            yield data.to(torch.float16).numpy()  # to nearest even, and bf16 -> f32 is exact (tests compare bytes)
        else:
            yield _encode(data.float().numpy(), t.kind)
        del data


def _write_aligned(fh, alignment: int, blocks, nbytes: int) -> None:
    """One tensor of the GGUF data section: padded to the alignment before and after, as GGUFWriter writes it."""
    fh.write(b"\0" * (-fh.tell() % alignment))
    written = 0
    for block in blocks():
        fh.write(memoryview(np.ascontiguousarray(block)).cast("B"))
        written += block.nbytes
    if written != nbytes:
        raise StageError(f"internal error: wrote {written} bytes for a tensor planned at {nbytes}")
    fh.write(b"\0" * (-nbytes % alignment))


def _tensor_nbytes(t: PlannedTensor) -> int:
    import gguf

    if t.kind in NUMPY_TYPES:
        return _numel(t.shape) * np.dtype(NUMPY_TYPES[t.kind]).itemsize
    return _numel(gguf.quant_shape_to_byte_shape(t.shape, _ggml_type(t.kind)))


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _encode(data: np.ndarray, kind: str) -> np.ndarray:
    if kind in NUMPY_TYPES:
        return data.astype(NUMPY_TYPES[kind], copy=False)
    import gguf

    # Rows are contiguous in the last dimension: gguf quantizes along it, exactly as llama.cpp reads it.
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), _ggml_type(kind))
