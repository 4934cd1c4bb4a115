"""Write gguf/Modelfile for every export: Ollama does not run Jinja, so the chat template used in training is
written as an explicit Go TEMPLATE with its stop strings (see qlora_kit/gguf/ollama/ollama.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

PREFERRED = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16", "f32")


def plan_modelfile(model_dir: Path, run_dir: Path | None, targets: dict[str, Path]) -> dict:
    """The Modelfile for these targets, worked out before any GGUF is written: its settings come from the tokenizer
    files (parsed in Python: ~80 MiB for a 150k vocabulary), which costs least before the tensor pass, not on top of
    what it leaves behind. write_modelfile writes it once the GGUFs exist."""
    from qlora_kit.runtime.compat import release_freed_heap
    from qlora_kit.data.templates import OLLAMA_TEMPLATES, identify_template
    from qlora_kit.gguf.ollama.ollama import build_modelfile
    from qlora_kit.gguf.vocab.light_tokenizer import load_without_vocabulary
    from qlora_kit.gguf.vocab.vocab import require_tokenizer, tokenizer_json, unloadable

    chosen = next((q for q in PREFERRED if q in targets), next(iter(targets)))
    require_tokenizer(model_dir)
    data = tokenizer_json(model_dir)
    try:
        # The chat template and eos text, from a load without the (150k-token) vocabulary.
        tokenizer = load_without_vocabulary(model_dir, data)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's tokenizer files
        raise unloadable(model_dir, exc) from None
    name, system = None, None
    if run_dir is not None:
        info = run_dir / "adapter" / "qlora_kit.json"
        if info.is_file():
            name = json.loads(info.read_text()).get("chat_template")
        from qlora_kit.recipe import load_recipe

        system = load_recipe(run_dir / "recipe.yaml").data.system_prompt
    if name not in OLLAMA_TEMPLATES:
        name = identify_template(tokenizer.chat_template or "")
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    text, warnings = build_modelfile(targets[chosen].name, name, system, stops, eos_token=tokenizer.eos_token)
    del tokenizer, data
    release_freed_heap()
    return {"text": text, "from": targets[chosen].name, "template": name, "warnings": warnings}


def write_modelfile(out: Path, plan: dict) -> dict:
    (out / "Modelfile").write_text(plan["text"])
    for warning in plan["warnings"]:
        print(f"qlora-kit: warning: {warning}", file=sys.stderr)
    return {"file": "Modelfile", "from": plan["from"], "template": plan["template"], "warnings": plan["warnings"]}
