"""ggml's own quantizer, called row block by row block: the code llama.cpp's `llama_model_quantize` runs, without
its whole-tensor buffers.

`ggml_quantize_chunk` is exported by the libggml-base that llama-cpp-python ships (C ABI, no compiler needed).
llama.cpp's quantizer converts a tensor to float32 and calls it on chunks of whole rows; without an importance
matrix every row is quantized on its own, so calling it on our row blocks gives the same bytes (tested against
`llama_model_quantize` in tests/test_export_kquant.py). Calls release the GIL, so row blocks are split across threads.
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from qlora_kit.errors import UsageError


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    import llama_cpp  # loads libllama and its ggml libraries from the package's lib/ folder

    folder = Path(llama_cpp.__file__).parent / "lib"
    path = next((p for p in sorted(folder.glob("libggml-base.*")) if p.suffix in (".so", ".dylib", ".dll")),
                None) or next(iter(sorted(folder.glob("*ggml-base*"))))
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_validate_row_data.restype = ctypes.c_bool
    lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def row_bytes(kind: str, n_per_row: int) -> int:
    return int(_lib().ggml_row_size(_type_id(kind), n_per_row))


# llama.cpp hands each thread chunks of at least 16,384 values (llama-quant.cpp: min_chunk_size); so do we.
MIN_CHUNK = 32 * 512


def quantize_rows(data: np.ndarray, kind: str, tensor: str) -> np.ndarray:
    """Quantize a float32 (rows x n_per_row) block to `kind`; the bytes of those rows in the GGUF layout.
    Input and output are validated as llama.cpp validates them: NaN or infinite weights are refused, naming the
    tensor, and so are quantized rows whose scales overflowed."""
    lib, type_id = _lib(), _type_id(kind)  # never an imatrix type: get_quant_type refuses those up front
    src = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, data.shape[-1])
    if not np.isfinite(src).all():  # llama.cpp checks its source rows as it reads them (check_tensors)
        raise UsageError(f"{tensor}: the weights hold NaN or infinite values; the model is broken: re-merge or "
                         "re-train it")
    rows, n_per_row = src.shape
    size = row_bytes(kind, n_per_row)
    out = np.empty(rows * size, dtype=np.uint8)
    lib.ggml_quantize_init(type_id)  # builds lookup tables once; not thread-safe to race on the first call
    per_chunk = max(1, -(-MIN_CHUNK // n_per_row))
    threads = max(1, min(os.cpu_count() or 1, -(-rows // per_chunk)))
    step = -(-rows // threads)

    def run(start: int) -> bool:
        stop = min(rows, start + step)
        dst = out.ctypes.data + start * size
        written = lib.ggml_quantize_chunk(type_id, src[start:stop].ctypes.data, dst, 0, stop - start, n_per_row,
                                          None)
        return lib.ggml_validate_row_data(type_id, dst, written)

    valid = [run(0)] if threads == 1 else list(_pool().map(run, range(0, rows, step)))
    if not all(valid):
        raise UsageError(f"{tensor}: {kind} rows failed llama.cpp's validation (a scale is NaN or infinite); the "
                         "weights are out of range for this type: choose another --quant")
    return out


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="qlora-kit-quantize")


def _type_id(kind: str) -> int:
    import gguf

    return int(gguf.GGMLQuantizationType[kind])
