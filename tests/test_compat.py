"""qlora_kit.runtime.compat, one test per workaround: the library still behaves the way that made the workaround
necessary (a pinned upgrade that changes it fails here, and the workaround can go), and the workaround still
undoes it. Versions verified: compat.VERIFIED."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, pinned_versions
from qlora_kit.runtime import compat


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter: process-wide settings must not leak into (or from) pytest's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_DATASETS_DISABLE", "UNSLOTH_CPU"))}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**base, "PYTHONPATH": str(ROOT), **(env or {})})


def test_verified_versions_are_the_pinned_ones():
    pins = pinned_versions()
    assert {lib: pins[lib] for lib in compat.VERIFIED if lib != "glibc"} == {
        lib: v for lib, v in compat.VERIFIED.items() if lib != "glibc"}


def test_bitsandbytes_repacks_nf4_for_evaluation_on_cpu_unless_turned_off():
    import torch
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes repacks only on CPUs with AVX512-BF16; this one has none")
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 64, bias=False)

    def layer():
        lin = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        lin.load_state_dict(dense.state_dict())
        return lin.to("cpu")

    x = torch.randn(3, 64)
    trained_through = layer()(x.clone().requires_grad_()).detach()  # the training forward: exact NF4
    for workaround, repacked in ((False, True), (True, False)):
        lin = layer()
        if workaround:
            compat.exact_nf4_on_cpu(lin)
        with torch.no_grad():
            evaluated = lin.eval()(x)
        assert getattr(lin.weight.quant_state, "packing_format_for_cpu", False) is repacked
        diff = (evaluated - trained_through).abs().max().item()
        assert (diff > 1e-4) if repacked else (diff == 0.0), diff


def test_unsloth_reads_unsloth_cpu_bf16_and_the_workaround_sets_it(monkeypatch):
    # unsloth_zoo/cpu/runtime.py is self-contained: load it alone (importing unsloth would patch transformers).
    location = Path(importlib.util.find_spec("unsloth_zoo").submodule_search_locations[0]) / "cpu" / "runtime.py"
    spec = importlib.util.spec_from_file_location("unsloth_zoo_cpu_runtime", location)
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    monkeypatch.delenv("UNSLOTH_CPU_BF16", raising=False)
    if not runtime.cpu_flags() & {"amx_bf16", "avx512_bf16"}:
        pytest.skip("Unsloth probes bf16 only on CPUs with native bf16; this one has none")
    assert runtime.cpu_bf16_supported() is True  # what an fp32 run would otherwise page bf16 kernels in for
    compat.unsloth_cpu_fp32("bfloat16")
    assert "UNSLOTH_CPU_BF16" not in os.environ  # a bf16 recipe is left alone
    compat.unsloth_cpu_fp32("auto")
    runtime.cpu_bf16_supported.cache_clear()
    assert os.environ["UNSLOTH_CPU_BF16"] == "0" and runtime.cpu_bf16_supported() is False
    monkeypatch.setenv("UNSLOTH_CPU_BF16", "1")
    compat.unsloth_cpu_fp32("auto")
    assert os.environ["UNSLOTH_CPU_BF16"] == "1"  # the user's own setting wins


def test_trl_and_transformers_trainer_behaviours_we_undo(tiny_model_dir, tmp_path, monkeypatch):
    import torch
    import trl.trainer.utils as trl_utils
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant, dtype=torch.float32,
                                                device_map={"": "cpu"})
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    dtypes = compat.trainable_dtypes(model)
    assert set(dtypes.values()) == {torch.float32}
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True, max_length=16,
                     dataset_kwargs={"skip_prepare_dataset": True})
    trainer = SFTTrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
                         train_dataset=Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[1, 2, 3]]}))
    trainable = lambda: {p.dtype for p in model.parameters() if p.requires_grad}  # noqa: E731
    printers = lambda: [c for c in trainer.callback_handler.callbacks if isinstance(c, PrinterCallback)]  # noqa: E731
    assert trainable() == {torch.bfloat16} and len(printers()) == 1  # what TRL and transformers do
    compat.restore_trainable_dtypes(model, dtypes)
    compat.remove_printer_callback(trainer)
    assert trainable() == {torch.float32} and printers() == []

    # TRL's loss runs a Triton kernel that has no CPU path; the model's own causal-LM loss is what replaces it.
    # (As TRL leaves it: another test in this process may have installed compat.cpu_fused_lm_head.)
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", None)
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "labels": torch.tensor([[1, 2, 3, 4]])}
    with pytest.raises(AttributeError):  # trl 1.15: the kernel is None without Triton, and Triton has no CPU path
        trainer.compute_loss(model, batch)
    plain = compat.plain_loss_sft_trainer()(model=model, args=args, train_dataset=trainer.train_dataset,
                                            processing_class=trainer.processing_class)
    with torch.no_grad():
        assert plain.compute_loss(model, batch).item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)

    # The preference trainers have no such escape (they need per-answer log-probs): cpu_fused_lm_head gives TRL's
    # fused head a plain-torch kernel, and the fused forward then gives the model's own per-token log-probs.
    assert compat.cpu_fused_lm_head() is True and compat.cpu_fused_lm_head() is False  # installed once
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(base)
    with torch.no_grad():
        fused = model(**batch, fused_lm_head=True).log_probs[0]
        plain_lp = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[0, :-1], -1)
    assert torch.allclose(fused, plain_lp.gather(1, batch["input_ids"][0, 1:, None]).squeeze(1), atol=1e-4)


MALLOC = """
import ctypes, sys
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
if sys.argv[1] == "pinned":
    from qlora_kit.runtime.compat import return_large_frees_to_the_os
    return_large_frees_to_the_os()
size = 4 << 20  # one tensor-sized block, freed and allocated again as a streaming loop does
libc.free(libc.malloc(size))
before = libc.mallinfo2().hblks
block = libc.malloc(size)
print(libc.mallinfo2().hblks - before)  # 1: served by mmap (returned to the OS on free); 0: from the heap
"""


def test_glibc_raises_its_mmap_threshold_after_a_free_unless_pinned():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert [_python(MALLOC, mode).stdout.strip() for mode in ("default", "pinned")] == ["0", "1"]


PROGRESS = """
import sys, datasets
if sys.argv[1] == "quiet":
    from qlora_kit.runtime.compat import no_datasets_progress_bars
    no_datasets_progress_bars()
datasets.load_dataset("json", data_files=sys.argv[2], split="train", cache_dir=sys.argv[3])
"""


def test_datasets_draws_progress_bars_unless_turned_off(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n')
    shown = [_python(PROGRESS, mode, str(data), str(tmp_path / mode)).stderr for mode in ("default", "quiet")]
    assert "Generating train split" in shown[0] and "Generating train split" not in shown[1], shown


WARNINGS = """
import sys, warnings
warnings.simplefilter("default")  # show everything Python would hide by default, then narrow
if sys.argv[1] == "quiet":
    from qlora_kit.runtime.compat import quiet_libraries
    quiet_libraries()
from qlora_kit.errors import QKWarning
import peft  # the stack: torch 2.13 warns a deprecation, bitsandbytes 0.50.2 logs that `kernels` is absent
warnings.warn_explicit("a library's note", UserWarning, "modules.py", 1, module="bitsandbytes.nn.modules")
warnings.warn_explicit("a deprecation", FutureWarning, "encode.py", 1, module="qlora_kit.data.encode")
warnings.warn_explicit("our own note", UserWarning, "encode.py", 1, module="qlora_kit.data.encode")
warnings.warn("our own warning", QKWarning)
"""


def test_library_warnings_are_silenced_by_module_and_category_but_ours_show():
    loud, quiet = (_python(WARNINGS, mode).stderr for mode in ("loud", "quiet"))
    chatters = ["torch.jit.script_method` is deprecated", "a library's note"]
    if "avx512_bf16" in Path("/proc/cpuinfo").read_text():  # bitsandbytes looks for `kernels` only there
        chatters.append("No module named 'kernels'")
    for chatter in chatters:
        assert chatter in loud and chatter not in quiet, chatter
    assert "a deprecation" not in quiet
    assert quiet.splitlines() == ["encode.py:1: UserWarning: our own note", "qlora-kit: warning: our own warning"]


def test_a_qlora_kit_warning_reaches_the_cli_user(tmp_path):
    from conftest import run_cli, write_recipe

    # The tiny tokenizer has no <start_of_turn>: data/encode.py warns that the gemma markers are not single tokens.
    result = run_cli("data", "check", str(write_recipe(tmp_path / "r.yaml", data={"chat_template": "gemma"})))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["qlora-kit: warning: chat template 'gemma': <start_of_turn>, <end_of_turn> "
                                          "are not single tokens in this tokenizer"]


def test_torch_cannot_load_onto_cpu_rank_devices_unless_registered(tmp_path):
    """Resuming a multi-process CPU run: the Trainer loads with map_location=torch.device('cpu', rank)."""
    code = """
import sys, torch
from qlora_kit.runtime import compat
torch.save({"x": torch.ones(3)}, sys.argv[1])
try:
    torch.load(sys.argv[1], map_location=torch.device("cpu", 1), weights_only=True)
    print("loaded without the workaround")
except RuntimeError as exc:
    print("refused:", str(exc).splitlines()[0])
compat.load_checkpoints_on_cpu_ranks()
compat.load_checkpoints_on_cpu_ranks()
print(torch.load(sys.argv[1], map_location=torch.device("cpu", 1), weights_only=True)["x"].sum().item())
"""
    result = _python(code, str(tmp_path / "state.pt"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "refused: don't know how to restore data location of torch.storage.UntypedStorage (tagged with cpu:1)", "3.0"]
