"""transformers' tokenizer for a model directory, loaded without its vocabulary and merges.

A 150k-token tokenizer costs ~260 MiB to load in transformers, and most of that stays with the process (freed
Python objects are not all returned to the OS). Export needs the tokenizer's *settings* several times (which
pre-tokenizer transformers installs, the chat template, the eos text), and none of them depends on the
vocabulary: transformers picks the tokenizer class and its pre-tokenizer from the config files and the class's own
code. So the same files are loaded from a scratch directory whose tokenizer.json has an empty vocabulary.
The one setting that does depend on the vocabulary size is transformers' Mistral regex fix (applied only above
100k tokens, and only when `fix_mistral_regex` is set): with that flag present the real files are loaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

SETTINGS_FILES = ("tokenizer_config.json", "config.json", "special_tokens_map.json", "added_tokens.json",
                  "chat_template.jinja", "chat_template.json")


def load_without_vocabulary(model_dir: Path, data: dict | None = None):
    """AutoTokenizer for `model_dir` with an empty vocabulary (`data`: tokenizer.json already parsed, if at hand)."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer_file = model_dir / "tokenizer.json"
    config_file = model_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if not tokenizer_file.is_file() or "fix_mistral_regex" in config:
        return AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory(prefix="qlora-kit-tok-") as tmp:
        for name in SETTINGS_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, Path(tmp) / name)
        data = data if data is not None else json.loads(tokenizer_file.read_text(encoding="utf-8"))
        empty = {**data, "model": {**data.get("model", {}), "vocab": {}, "merges": []}, "added_tokens": []}
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(empty), encoding="utf-8")
        del data, empty
        try:
            return AutoTokenizer.from_pretrained(tmp)
        except Exception:  # e.g. a Unigram model, which cannot be built without pieces: the real files, then
            pass
    return AutoTokenizer.from_pretrained(model_dir)
