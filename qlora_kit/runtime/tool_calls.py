"""Tool calls out of a model's generated text, as OpenAI-style `tool_calls` (issue #27).

Each model family writes its calls in its own markup; a parser per family (PARSERS) turns the text into
`Parsed(content, tool_calls, reasoning, malformed)`:
  hermes   (ChatML, Qwen2.5, Qwen3)  <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, one block a call
  llama-3  (Llama 3.1 JSON tools)    [<|python_tag|>]{"name": ..., "parameters": {...}}, several joined by ";"
  mistral                            [TOOL_CALLS][{"name": ..., "arguments": {...}, "id"?: ...}, ...]
A leading <think>...</think> block (Qwen3, R1-style models) goes to `reasoning` whatever the family.

Nothing here raises on what a model wrote: a call that was meant but cannot be read (broken JSON, no name,
arguments that are not an object) stays in `content` and is counted in `malformed`, so an eval can score it as a
wrong call instead of crashing the run or silently dropping it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_DECODER = json.JSONDecoder()


@dataclass
class Parsed:
    content: str
    tool_calls: list[dict] = field(default_factory=list)
    reasoning: str | None = None
    malformed: int = 0


def _call(name: str, arguments: dict, index: int, call_id: object = None) -> dict:
    # Compact JSON text, as OpenAI's API returns `arguments`; ensure_ascii=False keeps "São Paulo" readable.
    return {"id": call_id if isinstance(call_id, str) and call_id else f"call_{index}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)}}


def _as_call(obj: object, index: int, args_keys: tuple[str, ...]) -> dict | None:
    """The OpenAI call for one decoded object, or None when it is not a well-formed call."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
        return None
    key = next((k for k in args_keys if k in obj), None)
    arguments = {} if key is None else obj[key]  # no arguments at all: a function without parameters
    if not isinstance(arguments, dict):
        return None
    return _call(obj["name"].strip(), arguments, index, obj.get("id"))


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, the rest) for a text that begins with a <think> block. Also a bare leading "...</think>": chat
    templates that open the block in the generation prompt (Qwen3 thinking, DeepSeek-R1) leave only its end in
    what the model generates. An empty block (Qwen3 with thinking off) is no reasoning."""
    stripped = text.lstrip()
    end = stripped.find("</think>")
    if end < 0 or ("<think>" in stripped[:end] and not stripped.startswith("<think>")):
        return None, text
    inner = stripped[len("<think>"):end] if stripped.startswith("<think>") else stripped[:end]
    return (inner.strip() or None), stripped[end + len("</think>"):]


_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)  # an unclosed last block: cut off


def parse_hermes(text: str) -> Parsed:
    calls, kept, malformed, last = [], [], 0, 0
    for m in _HERMES_BLOCK.finditer(text):
        kept.append(text[last:m.start()])
        last = m.end()
        try:
            call = _as_call(json.loads(m.group(1).strip()), len(calls), ("arguments", "parameters"))
        except ValueError:
            call = None
        if call is None:
            malformed += 1
            kept.append(m.group(0))  # left where it was, so the reader sees what the model wrote
        else:
            calls.append(call)
    kept.append(text[last:])
    return Parsed("".join(kept).strip(), calls, malformed=malformed)


def _json_sequence(body: str, separator: str) -> list[tuple[object, str]] | None:
    """(value, its source text) for each JSON value in `body`, the values joined by `separator`; None if `body`
    is anything else (trailing text, broken JSON)."""
    out, i = [], 0
    while True:
        try:
            value, end = _DECODER.raw_decode(body, i)
        except ValueError:
            return None
        out.append((value, body[i:end]))
        i = end + len(body[end:]) - len(body[end:].lstrip())
        if i == len(body):
            return out
        if body[i] != separator:
            return None
        i += 1
        i += len(body[i:]) - len(body[i:].lstrip())


_LOOKS_LIKE_CALL = re.compile(r'^\{\s*"name"\s*:')


def parse_llama3(text: str) -> Parsed:
    body = text.strip()
    tagged = body.startswith("<|python_tag|>")
    if tagged:
        body = body[len("<|python_tag|>"):].strip()
    values = _json_sequence(body, ";") if body.startswith("{") else None
    if values is None:
        # Plain prose is content; a tagged or call-shaped text that does not parse was a call gone wrong.
        meant = tagged or bool(_LOOKS_LIKE_CALL.match(body))
        return Parsed(text.strip(), malformed=int(meant))
    calls, kept, malformed = [], [], 0
    for value, source in values:
        # Untagged, only an object with a name and parameters is a call: other JSON is an answer (the user asked
        # for JSON), and {"name": "Ada"} without parameters is more likely a record than a call.
        shaped = isinstance(value, dict) and "name" in value and ("parameters" in value or "arguments" in value)
        call = _as_call(value, len(calls), ("parameters", "arguments")) if shaped or tagged else None
        if call is not None:
            calls.append(call)
            continue
        kept.append(source)
        malformed += int(tagged or shaped)
    if not calls and not malformed:
        return Parsed(text.strip())
    return Parsed("; ".join(kept), calls, malformed=malformed)


_MISTRAL_NAMED = re.compile(r"([A-Za-z_][\w.-]*)\[ARGS\]")  # newer tokenizers: [TOOL_CALLS]name[ARGS]{...}


def parse_mistral(text: str) -> Parsed:
    pieces = text.split("[TOOL_CALLS]")
    kept, calls, malformed = [pieces[0]], [], 0
    for piece in pieces[1:]:
        body = piece.lstrip()
        named = _MISTRAL_NAMED.match(body)
        try:
            if named:
                args, end = _DECODER.raw_decode(body, named.end())
                items = [{"name": named.group(1), "arguments": args}]
            else:
                items, end = _DECODER.raw_decode(body)
                items = items if isinstance(items, list) else [items]
        except ValueError:
            malformed += 1
            kept.append("[TOOL_CALLS]" + piece)
            continue
        for item in items:
            call = _as_call(item, len(calls), ("arguments", "parameters"))
            if call is None:
                malformed += 1
                kept.append(json.dumps(item, ensure_ascii=False))
            else:
                calls.append(call)
        kept.append(body[end:])
    return Parsed(" ".join(p.strip() for p in kept if p.strip()), calls, malformed=malformed)


PARSERS = {"hermes": parse_hermes, "llama-3": parse_llama3, "mistral": parse_mistral}
# <|python_tag|> and [TOOL_CALLS] are special tokens, so the text must be decoded with special tokens kept; then
# the turn's end marker comes along too, and would make the last call's JSON look broken.
_END_MARKERS = ("<|eom_id|>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>", "</s>")


def _strip_end(text: str) -> str:
    text = text.rstrip()
    while text.endswith(_END_MARKERS):
        text = text[:text.rindex("<")].rstrip()
    return text


def parse_tool_calls(text: str, family: str) -> Parsed:
    """The content, calls, reasoning and malformed-call count in `text`, generated by a model of `family`."""
    if family not in PARSERS:
        raise ValueError(f"unknown tool-call family {family!r}; available: {', '.join(PARSERS)}")
    reasoning, rest = split_reasoning(_strip_end(text))
    parsed = PARSERS[family](rest)
    parsed.reasoning = reasoning
    return parsed


# Our chat template names (data/templates.py, plus qwen3 which writes ChatML) -> the family they call tools in.
TEMPLATE_FAMILIES = {"chatml": "hermes", "qwen3": "hermes", "llama-3": "llama-3", "mistral": "mistral"}
# Markers a tokenizer's own Jinja template prints around tool calls; first match wins.
_JINJA_MARKERS = (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama-3"),
                  ("ipython", "llama-3"))


def family_for_template(name_or_jinja: str) -> str | None:
    """The tool-call family for a template name or a Jinja template's text; None when it has no known tool format."""
    if name_or_jinja in TEMPLATE_FAMILIES:
        return TEMPLATE_FAMILIES[name_or_jinja]
    return next((family for marker, family in _JINJA_MARKERS if marker in name_or_jinja), None)
