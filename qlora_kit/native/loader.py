"""The one place a llama.cpp model is loaded (export verification, eval's GGUF systems, chat, serve, tokenizer
checks): the process-wide llama.cpp workarounds are applied first, the file is noted for a crash report, and
llama.cpp's own C-level output is kept out of ours."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def captured_native_output():
    """llama.cpp writes to the process's stdout/stderr from C; keep it out of ours (it is returned on failure)."""
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        box = {"text": ""}
        try:
            yield box
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            box["text"] = sink.read().decode("utf-8", "replace")


def prepare() -> None:
    """What every llama.cpp load in this process needs first (idempotent): the CPU workarounds. `serve` calls it
    before llama-cpp-python's server constructs its own `Llama`."""
    from qlora_kit.runtime.compat import keep_llama_cpp_off_amx

    keep_llama_cpp_off_amx()


def load(gguf_path, doing: str = "loading", **kwargs):
    """llama_cpp.Llama, or a one-line StageError carrying llama.cpp's own last complaint. `doing` says what the
    model is loaded for ("verifying", "evaluating", ...): a crash report names it with the file."""
    import llama_cpp

    from qlora_kit.errors import StageError
    from qlora_kit.native.crash import note

    prepare()
    note(doing=f"llama.cpp was {doing}", file=str(gguf_path))
    with captured_native_output() as log:
        try:
            return llama_cpp.Llama(model_path=str(gguf_path), verbose=False, **kwargs)
        except ValueError:
            pass
    errors = [line for line in log["text"].splitlines() if "error" in line.lower()] or log["text"].splitlines()
    raise StageError(f"llama.cpp cannot load {Path(gguf_path).name}: "
                     f"{errors[-1].strip() if errors else 'no message'}")


def system_info() -> dict:
    """llama.cpp's own view of this machine: the backends it was built with and the CPU features it uses, parsed
    from `llama_print_system_info` ("CPU : SSE3 = 1 | AVX2 = 1 | ... | AMX_INT8 = 1 | ...")."""
    import llama_cpp

    text = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    features: dict[str, str] = {}
    backends: list[str] = []
    for part in text.split("|"):
        part = part.strip()
        if ":" in part and "=" not in part.split(":", 1)[0]:
            backend, part = (s.strip() for s in part.split(":", 1))
            backends.append(backend)
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            features[key] = value
    return {"text": text.strip(), "backends": backends, "features": features}
