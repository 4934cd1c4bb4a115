"""Ollama Modelfiles: the training chat template as an explicit Go TEMPLATE, with its stop strings.

Ollama runs Go text/template, not Jinja, so each built-in chat template of `qlora_kit/data/templates.py` has a Go
twin there (OLLAMA_TEMPLATES); this module writes the one matching the model into a Modelfile, quoted so that
Ollama's parser reads every value back exactly.
"""

from __future__ import annotations

from pathlib import Path

from qlora_kit.data.templates import EOS, FALLBACK_STOPS, FALLBACK_TEMPLATE, OLLAMA_TEMPLATES


def ollama_template(name: str, eos_token: str | None = None) -> str:
    """The Go template for a built-in name, with the eos text filled in (empty when unknown)."""
    if eos_token and ("{{" in eos_token or "}}" in eos_token):
        raise ValueError(f"eos token {eos_token!r} cannot be written into a Go template")
    return OLLAMA_TEMPLATES[name].go.replace(EOS, eos_token or "")


def build_modelfile(gguf_filename: str, template_name: str | None, system: str | None, extra_stops: list[str],
                    eos_token: str | None = None) -> tuple[str, list[str]]:
    """The Modelfile text for `ollama create -f`, and warnings for the user (empty when all is well)."""
    if not gguf_filename or Path(gguf_filename).name != gguf_filename or "\n" in gguf_filename:
        raise ValueError(f"expected a plain GGUF file name next to the Modelfile, got {gguf_filename!r}")
    warnings: list[str] = []
    entry = OLLAMA_TEMPLATES.get(template_name) if template_name else None
    if entry is None:
        what = f"chat template {template_name!r}" if template_name else "the model's chat template"
        warnings.append(f"{what} was not recognised (known: {OLLAMA_TEMPLATES.choices()}); the Modelfile uses the "
                        "closest safe fallback (plain 'User:'/'Assistant:' turns), which the model was not trained "
                        "on: replace its TEMPLATE with one matching the chat template")
        go, stops = FALLBACK_TEMPLATE, FALLBACK_STOPS
    else:
        if EOS in entry.go and not eos_token:
            warnings.append(f"chat template {entry.name!r} ends assistant turns with the eos token, but its text is "
                            "unknown: earlier assistant turns are sent to the model without it")
        go, stops = ollama_template(entry.name, eos_token), entry.stops
    every = [s for s in (*stops, *extra_stops, *([eos_token] if eos_token else [])) if s]
    lines = [f"FROM ./{gguf_filename}", f"TEMPLATE {_quote(go, triple=True)}"]
    # Like Ollama's own Modelfile writer: triple quotes for values holding a quote or a line end.
    lines += [f"PARAMETER stop {_quote(s, triple=any(c in s for c in _NEEDS_TRIPLE))}" for s in dict.fromkeys(every)]
    if system:
        lines.append(f"SYSTEM {_quote(system, triple=True)}")
    return "\n".join(lines) + "\n", warnings


# Ollama's Modelfile parser (parser/parser.go) has no escape sequences: a value is "...", """...""" or bare, taken
# verbatim, and ends at the first line end where it unquotes. So a backslash-escaped \" would stay in the stop
# string; instead we pick the quoting that Ollama reads back exactly, checked with a port of its parser.
_NEEDS_TRIPLE = '"\n'  # stop strings holding these go in triple quotes first, as Ollama's own writer does


def _unquote(s: str) -> str | None:
    q = '"""' if s.startswith('"""') else '"' if s.startswith('"') else ""
    return s[len(q):len(s) - len(q)] if len(s) >= 2 * len(q) and s.endswith(q) else None


def _ollama_reads(value: str) -> str | None:
    """The value Ollama reads from `KEYWORD <value>` followed by a line end, if it reads all of it."""
    buf = ""
    for i, ch in enumerate(value + "\n"):
        if ch in "\r\n":
            read = _unquote(buf.strip(" \t\n\r\v\f"))
            if read is not None:
                return read if i == len(value) else None  # ended early: the rest would be a bad command
            buf += ch
        elif ch in " \t" or ch.isprintable():  # the parser silently drops other control characters
            buf += ch
    return None


def _quote(value: str, triple: bool) -> str:
    forms = [f'"""{value}"""', f'"{value}"']
    for form in forms if triple else forms[::-1]:
        if _ollama_reads(form) == value:
            return form
    raise ValueError(f"{value!r} cannot be written into a Modelfile: Ollama's parser has no escapes for it")
