"""llama.cpp's token ids for a GGUF vocabulary, computed in a child process so that an abort is an answer.

llama.cpp throws C++ exceptions from inside tokenization (a byte-level vocabulary without a byte token:
std::out_of_range from llama_vocab::byte_to_token) and nothing catches them: the process aborts. Every vocabulary
check (export's choice of candidate, verification, `export --check-only`, a GGUF base's tokenizer) therefore asks a
child. The child prints one JSON line per text as it goes, so when it dies the parent knows the text that killed it
and names it with the signal: "llama.cpp aborts (SIGABRT) tokenizing '\\x80' with model.gguf".

    python -m qlora_kit.gguf.vocab.llama_tokens FILE.gguf < {"texts": [HEX, ...], "special": true}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from qlora_kit.errors import StageError


class TokenizerCrash(StageError):
    """llama.cpp died tokenizing `text` (bytes) with `path`."""

    def __init__(self, message: str, text: bytes, path: Path, signal_name: str):
        super().__init__(message)
        self.text, self.path, self.signal_name = text, path, signal_name


def shown(text: bytes, keep: int = 40) -> str:
    """A probe as the user would recognise it: the text where it is valid UTF-8, else the bytes."""
    try:
        value = repr(text.decode("utf-8"))
    except UnicodeDecodeError:
        value = repr(text)
    return value if len(value) <= keep else value[:keep] + "...'"


def tokenize(gguf_path, texts: list[bytes] | list[str], special: bool = True,
             add_special: bool = False) -> list[list[int]]:
    """llama.cpp's ids for each text (`special`: parse special tokens in the text; `add_special`: add BOS/EOS as the
    file says), or a TokenizerCrash naming the text it died on, or a StageError when llama.cpp cannot load it."""
    from qlora_kit.native.crash import died_by_signal, signal_name

    path = Path(gguf_path)
    raw = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
    request = json.dumps({"texts": [t.hex() for t in raw], "special": special, "add_special": add_special})
    done = subprocess.run([sys.executable, "-m", __name__, str(path)], input=request, capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = _answers(done.stdout)
    signum = died_by_signal(done.returncode)
    if signum is not None:
        name = signal_name(signum)
        text = raw[len(lines)] if len(lines) < len(raw) else b""
        raise TokenizerCrash(f"llama.cpp crashes ({name}) tokenizing {shown(text)} with {path.name}",
                             text, path, name)
    if done.returncode != 0:
        last = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise StageError(last[-1] if last else f"tokenizing with {path.name} failed (exit code {done.returncode})")
    return lines


def _answers(stdout: str) -> list[list[int]]:
    """The child's complete answers, in order (a line cut short by the child's death is not one)."""
    answers = []
    for line in stdout.splitlines():
        try:
            answers.append(json.loads(line))
        except ValueError:
            break
    return answers


def main(argv: list[str]) -> int:
    from qlora_kit.native.loader import captured_native_output, load

    request = json.loads(sys.stdin.read())
    texts = [bytes.fromhex(t) for t in request["texts"]]
    try:
        llm = load(argv[0], "checking the tokens of", vocab_only=True)
    except StageError as exc:
        print(exc, file=sys.stderr)
        return 2
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the real stdout: llama.cpp's own output is captured below
    with captured_native_output():
        for text in texts:
            ids = llm.tokenize(text, add_bos=bool(request.get("add_special")), special=bool(request["special"]))
            out.write(json.dumps(list(ids)) + "\n")
            out.flush()
        llm.close()
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
