"""A GGUF for a base model in the model table, so /v1/chat/completions answers the bases too (not only `ft:...`).

An entry with `gguf: PATH` answers from that file. Otherwise its model (the entry's `base`, or its recipe's
`model.name`) is exported once to Q8_0, in a child process (resolving a `builtin:` model builds it with
transformers, which the server never imports), into ROOT/.qlora-kit-server/bases/ALIAS-HASH/, and reused. Q8_0:
the smallest type whose answers stay close to the 16-bit model's (benchmarks/RESULTS.md); no verification, which
would hold the model's reference logits for what is only a chat endpoint. A Hub id must already be in the local
Hugging Face cache: the server downloads nothing a client asked for.

    python -m qlora_kit.server.openai.bases MODEL OUT_DIR     (what the child runs)
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from qlora_kit.server.openai.errors import OpenAIError

EXPORT_TIMEOUT_S = 3600
_LOCK = threading.Lock()  # one export at a time: each holds a model's weights


def base_gguf(root: Path, alias: str, model: str) -> Path:
    key = hashlib.sha256(f"{alias}\0{model}".encode()).hexdigest()[:12]
    out = root / ".qlora-kit-server" / "bases" / f"{''.join(c if c.isalnum() else '-' for c in alias)[:40]}-{key}"
    with _LOCK:
        found = sorted(out.glob("*.gguf"))
        if found:
            return found[0]
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        done = subprocess.run([sys.executable, "-m", "qlora_kit.server.openai.bases", model, str(tmp)],
                              capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
            reason = lines[-1].removeprefix("qlora-kit: error: ") if lines else f"exit code {done.returncode}"
            raise OpenAIError(400, f"{alias!r}: cannot make a GGUF of its base model {model} to answer from: "
                                   f"{reason}", "model", "model_not_servable")
        tmp.replace(out)  # complete: only now does the next request find it
        return sorted(out.glob("*.gguf"))[0]


def _main(model: str, out: str) -> int:
    from qlora_kit.errors import QKError

    try:
        _export_base(model, out)
    except QKError as exc:
        print(f"qlora-kit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _export_base(model: str, out: str) -> None:
    """The base model (a directory, a built-in or a Hub id already in the local cache) as an unverified Q8_0."""
    from qlora_kit.errors import UsageError
    from qlora_kit.eventlog import EventLog
    from qlora_kit.gguf.run import run_export
    from qlora_kit.model.resolve import resolve_model_path
    from qlora_kit.recipe.options import ExportOptions

    path = resolve_model_path(model)
    if not Path(path).is_dir():  # a Hub id: only what the local cache already holds
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(path, local_files_only=True)
        except Exception as exc:  # huggingface_hub: not in the cache
            raise UsageError(f"{model} is not in the local Hugging Face cache ({type(exc).__name__})") from None
    run_export(path, ExportOptions(quant=["q8_0"], verify=False), EventLog(), out=out)


if __name__ == "__main__":
    raise SystemExit(_main(*sys.argv[1:3]))
