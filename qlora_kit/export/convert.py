"""Merged HF checkpoint -> GGUF, streamed tensor by tensor (peak memory ~ one tensor, not the model).

F32/F16/BF16/Q8_0 are written directly with the `gguf` package; K-quants and Q4_0 are made from an F32/F16/BF16
GGUF by llama.cpp's own quantizer through llama-cpp-python (`llama_model_quantize`): no compiler, no network, no
converter script downloaded at run time.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from qlora_kit.errors import StageError, UsageError
from qlora_kit.export.archs import ARCHS, common_kv, permute_for_llama_cpp
from qlora_kit.export.vocab import add_vocab
from qlora_kit.compat import return_large_frees_to_the_os
from qlora_kit.merge.checkpoint import Checkpoint
from qlora_kit.export.quants import NEEDS_IMATRIX, QUANT_TYPES, QuantType, get_quant_type  # noqa: F401


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


def write_gguf(model_dir: Path, out_path: Path, ggml_target: str, file_type: int, name: str) -> dict:
    import gguf

    return_large_frees_to_the_os()  # tensor-sized buffers come and go one after another (see qlora_kit.memory)
    ckpt = Checkpoint(model_dir)
    if ckpt.prequantized:
        raise UsageError(f"{model_dir}: a bitsandbytes 4-bit checkpoint cannot be converted (its tensors are packed "
                         "NF4 blocks); merge into 16-bit weights first: qlora-kit merge RUN_DIR")
    config = ckpt.config
    arch_name = (config.get("architectures") or ["?"])[0]
    if arch_name not in ARCHS:
        raise UsageError(f"{model_dir}: architecture {arch_name} is not supported for GGUF export; supported: "
                         f"{ARCHS.choices()}")
    arch = ARCHS[arch_name]
    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf_arch)
    name_map = gguf.get_tensor_name_map(model_arch, config["num_hidden_layers"])
    plan = []
    for hf_name in ckpt.names():
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UsageError(f"{model_dir}: cannot map tensor {hf_name} to a GGUF name for {arch.gguf_arch}")
        shape = ckpt.shape(hf_name)
        plan.append((hf_name, gguf_name, shape, tensor_type(gguf_name, shape, ggml_target)))
    extra = arch.extra_tensors(config)

    writer = gguf.GGUFWriter(str(out_path), arch.gguf_arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    common_kv(writer, config, arch.gguf_arch)
    if arch.extra_kv:
        arch.extra_kv(writer, config)
    vocab = add_vocab(writer, model_dir, config["vocab_size"], space_prefix=arch.space_prefix)
    for hf_name, gguf_name, shape, kind in plan:
        if kind in NUMPY_TYPES:
            dtype = np.dtype(NUMPY_TYPES[kind])
            writer.add_tensor_info(gguf_name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        else:  # BF16 and quantized types are written as raw bytes in their block layout
            byte_shape = gguf.quant_shape_to_byte_shape(shape, _ggml_type(kind))
            writer.add_tensor_info(gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                                   raw_dtype=_ggml_type(kind))
    for gguf_name, data in extra.items():
        writer.add_tensor_info(gguf_name, data.shape, data.dtype, data.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    for hf_name, gguf_name, shape, kind in plan:
        data = ckpt.get(hf_name).float().numpy()
        if arch.permute_qk and ".self_attn.q_proj." in hf_name:
            data = permute_for_llama_cpp(data, heads)
        elif arch.permute_qk and ".self_attn.k_proj." in hf_name:
            data = permute_for_llama_cpp(data, kv_heads)
        if arch.norm_shift and hf_name.endswith("norm.weight"):
            data = data + arch.norm_shift
        encoded = _encode(data, kind)
        del data
        writer.write_tensor_data(encoded)
        del encoded  # before reading the next tensor: peak memory is one tensor, not two
    for data in extra.values():
        writer.write_tensor_data(data)
    writer.close()
    types = {}
    for _, _, _, kind in plan:
        types[kind] = types.get(kind, 0) + 1
    return {"architecture": arch.gguf_arch, "tensors": len(plan) + len(extra), "tensor_types": types, **vocab}


def _encode(data: np.ndarray, kind: str) -> np.ndarray:
    if kind in NUMPY_TYPES:
        return data.astype(NUMPY_TYPES[kind], copy=False)
    import gguf

    # Rows are contiguous in the last dimension: gguf quantizes along it, exactly as llama.cpp reads it.
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), _ggml_type(kind))


def llama_cpp_quantize(src: Path, dst: Path, file_type: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = 0  # all cores
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if code != 0:
        raise StageError(f"llama.cpp's quantizer failed (return code {code}) making {dst.name} from {src.name}")
