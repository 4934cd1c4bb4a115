"""Every workaround for a library's behaviour, and every process-wide setting, in one place.

Each function says what it works around, why, and the versions it was verified against (`VERIFIED`, the pins of
requirements/constraints.txt). tests/test_compat.py checks, for each one, that the library still behaves the way
that made the workaround necessary and that the workaround still undoes it: a pinned upgrade that changes either
fails there, not silently in a training run. Nothing here runs on import; callers apply each one explicitly.
Heavy libraries are imported inside the functions (`import qlora_kit.runtime.compat` stays cheap, for the CLI).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# The versions each workaround was verified against (tests/test_compat.py compares them with the pins).
VERIFIED = {"bitsandbytes": "0.50.2", "transformers": "5.17.0", "trl": "1.15.0", "datasets": "4.8.5",
            "unsloth_zoo": "2026.10.9", "accelerate": "1.15.0", "torch": "2.13.0", "glibc": "2.36",
            "llama-cpp-python": "0.3.36"}

# Libraries whose warnings are noise for a qlora-kit user (deprecations aimed at library authors, notes about
# optional packages). Their loggers are quietened too where they log instead of warn.
LIBRARY_MODULES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "huggingface_hub",
                   "unsloth", "unsloth_zoo", "tokenizers", "safetensors", "gguf", "llama_cpp", "pyarrow", "triton",
                   "torchao", "xformers", "matplotlib", "pydantic", "jinja2", "tqdm", "multiprocess", "numpy")
LIBRARY_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
M_MMAP_THRESHOLD = -3  # glibc's malloc.h


VERBOSE_ENV = "QLORA_KIT_LOG"  # =verbose: let the libraries' output through (CLI, qk.train, qk.start's child)


def verbose_requested(verbose: bool | None = None) -> bool:
    """An explicit True/False wins; None: whether QLORA_KIT_LOG=verbose is set."""
    if verbose is not None:
        return verbose
    return os.environ.get(VERBOSE_ENV, "").strip().lower() == "verbose"


def quiet_libraries() -> None:
    """Silence library chatter without hiding qlora-kit's own warnings. Verified: transformers 5.17.0, datasets 4.8.5,
    huggingface_hub 1.33.0.

    Deprecation warnings, bitsandbytes' note that the optional `kernels` package is absent, and progress bars when
    output goes to a log bury our own progress and one-line errors; --debug and QLORA_KIT_LOG=verbose keep them
    (this then does nothing). The libraries read the variables below when imported, which is why this runs before
    any command does. huggingface_hub sets its logger's level when imported (HF_HUB_VERBOSITY, default warning),
    undoing a level set earlier: hence the variable as well as the level.
    """
    if verbose_requested():
        return
    hide_library_warnings()
    warnings.formatwarning = _format_warning
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    if not sys.stderr.isatty():
        # In logs, progress bars are noise; on a terminal they are how a multi-GB Hub download shows it is alive.
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry warnings precede our one-line error


def hide_library_warnings() -> None:
    """Ignore warnings by category (deprecations, whoever raises them) and by the module that raises them (the
    libraries above), never globally: a `qlora_kit.*` warning, or one raised as `QKWarning`, still shows."""
    for action, _, category, module, _ in reversed(library_warning_filters()):
        warnings.filterwarnings(action, category=category, module=module.pattern if module else "")


def library_warning_filters() -> list[tuple]:
    """The entries hide_library_warnings puts first in `warnings.filters`, in their order there (QKWarning's
    first: it wins). runtime/quiet.py inserts these very objects for one API call and takes them out after."""
    import re

    from qlora_kit.errors import QKWarning

    modules = re.compile(rf"^({'|'.join(LIBRARY_MODULES)})(\.|$)")
    return [("default", None, QKWarning, None, 0), ("ignore", None, Warning, modules, 0),
            *(("ignore", None, category, None, 0) for category in reversed(LIBRARY_CATEGORIES))]


def _format_warning(message, category, filename, lineno, line=None, _python=warnings.formatwarning) -> str:
    """Ours as `qlora-kit: warning: ...`, like the one-line errors; anything else as Python prints it."""
    from qlora_kit.errors import QKWarning

    if issubclass(category, QKWarning):
        return f"qlora-kit: warning: {message}\n"
    return _python(message, category, filename, lineno, line)


def no_datasets_progress_bars() -> None:
    """`datasets` draws a bar for every split it generates and every map, even for a 74-row local file: one per
    call, unreadable in a log. Verified: datasets 4.8.5 (an explicit HF_DATASETS_DISABLE_PROGRESS_BARS=0 wins)."""
    import datasets

    datasets.disable_progress_bars()


def exact_nf4_on_cpu(model) -> None:
    """Keep bitsandbytes' CPU fast path off. Verified: bitsandbytes 0.50.2.

    On CPUs with AVX512-BF16, a Linear4bit's first forward without gradients (evaluation) repacks its weight in
    place for a bf16 inference kernel (absmax rounded to bf16, ~5e-3 error per layer) and never unpacks it.
    Training through the repacked weight then differs from training through the weights the run loaded: an eval in
    mid-run changed every later step of the hf backend. Unsloth's CPU loader turns it off the same way
    (unsloth_zoo.cpu.loader); the merge's fidelity reference needs it off too."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def unsloth_cpu_fp32(model_dtype: str) -> None:
    """Tell Unsloth's CPU backend not to probe bf16 when the run is fp32. Verified: unsloth_zoo 2026.10.9.

    On CPU we train in fp32 (train.auto). Unsloth's CPU backend otherwise checks bitsandbytes 4-bit with a bf16
    forward + backward on CPUs with native bf16 (unsloth_zoo.cpu.runtime.cpu_bf16_supported), paging in bf16
    kernels an fp32 run never uses: ~4 MiB of peak RSS, measured. Only its CPU backend reads this; losses and
    adapters stay bit-identical. A user's own setting wins, and a bf16 recipe leaves it alone. Must run before
    `import unsloth`."""
    if model_dtype in ("auto", "float32"):
        os.environ.setdefault("UNSLOTH_CPU_BF16", "0")


def remove_printer_callback(trainer) -> None:
    """transformers' Trainer prints raw log dicts to stdout when tqdm is disabled (PrinterCallback, added in
    Trainer.__init__); our Progress callback reports instead. Verified: transformers 5.17.0."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def trainable_dtypes(model) -> dict:
    """The dtypes of the trainable parameters, to hand to `restore_trainable_dtypes` after building the trainer."""
    return {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}


def restore_trainable_dtypes(model, dtypes: dict) -> None:
    """Undo TRL's blanket cast of a quantized model's LoRA weights to bfloat16 (SFTTrainer.__init__).
    Verified: trl 1.15.0.

    Why: the backend made the adapter weights fp32 on purpose (master weights; compute still runs in the model's
    dtype), and the cast made fresh runs train bf16 weights with bf16 Adam moments while a resumed run reloads
    them as fp32, so resumed runs diverged from uninterrupted ones. The optimizer does not exist yet here.
    """
    for name, param in model.named_parameters():
        if name in dtypes and param.dtype != dtypes[name]:
            param.data = param.data.to(dtypes[name])


def plain_loss_sft_trainer():
    """SFTTrainer with the model's own causal-LM loss. Verified: trl 1.15.0.

    TRL computes the SFT loss through a Triton kernel (fused LM head) with no CPU path: on CPU tensors it fails,
    with or without Triton installed. On CPU the hf backend therefore uses the model's own causal-LM loss (what
    `transformers.Trainer` computes). Unsloth replaces the loss itself, so it needs no such change."""
    from transformers import Trainer
    from trl import SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return PlainLossSFTTrainer


def cpu_fused_lm_head() -> bool:
    """Give TRL's fused LM head a CPU path where its Triton kernel is missing (runtime/logprobs.py says why).
    Verified: trl 1.15.0. Returns whether it was installed (False where the kernel imported)."""
    import trl.trainer.utils as trl_utils

    if trl_utils._ChunkedLogProbFunction is not None:
        return False
    from qlora_kit.runtime.logprobs import PlainLogProbs

    trl_utils._ChunkedLogProbFunction = PlainLogProbs
    return True


def _glibc():
    """The C library, when it is glibc-like (has mallopt/malloc_trim); None elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def return_large_frees_to_the_os() -> None:
    """Keep tensor-sized allocations out of the malloc heap (glibc only; elsewhere a no-op). Verified: glibc 2.36.

    glibc serves blocks above M_MMAP_THRESHOLD with mmap and returns them to the OS on free, but raises that
    threshold (up to 32 MiB) every time such a block is freed. A streaming loop that allocates and frees one
    tensor after another then gets later tensors from the heap, whose freed pages mostly stay in the process
    (measurements: benchmarks/RESULTS.md). Setting the threshold once pins it at 1 MiB.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def release_freed_heap() -> None:
    """Hand the malloc heap's free pages back to the OS (glibc's malloc_trim; elsewhere a no-op). Parsing a large
    tokenizer.json leaves tens of MiB of freed small blocks in the heap, counted in RSS until reused; the tensor
    pass that follows then peaks on top of them."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


_CPU_RANKS_REGISTERED = False


def _is_cpu_rank_location(location) -> bool:
    return isinstance(location, str) and location.startswith("cpu:") and location[4:].isdigit()


def _cpu_rank_deserialize(obj, location):
    return obj if _is_cpu_rank_location(location) else None  # the storage is already in CPU memory


def load_checkpoints_on_cpu_ranks() -> None:
    """Let torch.load restore to 'cpu:N', the device accelerate gives each process of a multi-process CPU run.
    Verified: torch 2.13.0, accelerate 1.15.0, transformers 5.17.0.

    Resuming a distributed run, the Trainer loads the optimizer state with map_location=args.device, which
    accelerate sets to torch.device("cpu", local_rank) for a multi-CPU (gloo) run; torch's deserializer knows only
    "cpu" and raises "don't know how to restore data location of torch.storage.UntypedStorage (tagged with cpu:0)".
    torch.serialization.register_package (public API) adds a deserializer for "cpu:N" that keeps the storage where
    it is, in CPU memory. Registered once per process."""
    global _CPU_RANKS_REGISTERED
    if _CPU_RANKS_REGISTERED:
        return
    from torch.serialization import register_package

    register_package(30, lambda obj: None, _cpu_rank_deserialize)
    _CPU_RANKS_REGISTERED = True


# QLORA_KIT_LLAMA_AMX=on lets llama.cpp use its AMX kernels anyway (e.g. to check whether an upgrade fixed them);
# =off applies the guard whatever the library reports; unset: applied where llama.cpp was built with AMX.
LLAMA_AMX_ENV = "QLORA_KIT_LLAMA_AMX"
LLAMA_AMX_ISSUE = "llama.cpp issue #20824 (segfault in ggml_backend_amx_mul_mat; closed as stale, unfixed)"
_LLAMA_AMX_GUARD: dict | None = None


def keep_llama_cpp_off_amx(amx: bool | None = None) -> dict:
    """Load llama.cpp models without the "extra" (repacking) CPU buffer types where llama.cpp has AMX kernels.
    Verified: llama-cpp-python 0.3.36 (its vendored llama.cpp), on an Intel Xeon (Sapphire Rapids, amx_int8).

    Why: llama-cpp-python built from source with the native CPU flags compiles ggml's AMX path on CPUs that have
    it; at load the quantized weights are repacked into the AMX buffer and the first decode dies with SIGSEGV in
    ggml::cpu::amx::tensor_traits::compute_forward (LLAMA_AMX_ISSUE). Every quantized GGUF crashed: verification,
    eval, chat, serve; F16 files (no AMX kernel) did not. The model parameter `use_extra_bufts = False` keeps the
    weights in the plain CPU buffer; llama-cpp-python has no `Llama(...)` argument for it, so its
    `llama_model_default_params` (which `Llama.__init__` calls for every load, the server's included) is wrapped to
    return it off. Applied once per process, before the first load; only where the loaded library reports
    AMX_INT8 (a library built without AMX, or a CPU without it, keeps its repacking, which is faster there).
    `amx` forces the detection (tests on CPUs without AMX). Returns {"active", "why"} for `qlora-kit doctor`.
    """
    global _LLAMA_AMX_GUARD
    if _LLAMA_AMX_GUARD is not None and amx is None:
        return _LLAMA_AMX_GUARD
    import llama_cpp.llama_cpp as lib

    setting = os.environ.get(LLAMA_AMX_ENV, "").strip().lower()
    if amx is None:
        amx = "AMX_INT8 = 1" in lib.llama_print_system_info().decode("utf-8", "replace")
    if setting == "on":
        _LLAMA_AMX_GUARD = {"active": False, "why": f"{LLAMA_AMX_ENV}=on: llama.cpp may use its AMX kernels "
                                                     f"({LLAMA_AMX_ISSUE})"}
        return _LLAMA_AMX_GUARD
    if not amx and setting != "off":
        _LLAMA_AMX_GUARD = {"active": False, "why": "llama.cpp has no AMX kernels here: nothing to avoid"}
        return _LLAMA_AMX_GUARD
    # Our own attribute: llama-cpp-python's ctypes functions already carry a `__wrapped__` (its Python stub).
    original = getattr(lib.llama_model_default_params, "_qk_unguarded", lib.llama_model_default_params)

    def llama_model_default_params():
        params = original()
        params.use_extra_bufts = False
        return params

    llama_model_default_params._qk_unguarded = original
    lib.llama_model_default_params = llama_model_default_params
    why = f"{LLAMA_AMX_ENV}=off" if setting == "off" and not amx else "llama.cpp was built with AMX kernels"
    _LLAMA_AMX_GUARD = {"active": True, "why": f"{why}: quantized models load without repacking, avoiding "
                                               f"{LLAMA_AMX_ISSUE}"}
    return _LLAMA_AMX_GUARD
