"""render_go: a Go text/template interpreter for exactly the subset the built-in Ollama templates use
(qlora_kit/data/templates.py: OLLAMA_TEMPLATES), and nothing more; the tests use it to prove each Go template
renders a conversation to the same text as its Jinja twin. ollama_values builds the data Ollama executes a chat
TEMPLATE with (template/template.go `collate`)."""

from __future__ import annotations

import json
import re

_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)  # Go trims only at "{{- " and " -}}"
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|:=|=|\$\w*(?:\.\w+)*|(?:\.\w+)+|\.|\w+|\S')


def _scope(scopes: list[dict], var: str) -> dict:
    scope = next((s for s in reversed(scopes) if var in s), None)
    if scope is None:
        raise ValueError(f"undefined variable {var}")
    return scope


def _value(tok: str, dot, scopes: list[dict]):
    if tok.startswith('"'):
        return json.loads(tok)  # Go and JSON agree on the escapes a template needs
    if tok[0] not in "$.":
        raise ValueError(f"unsupported Go template operand {tok!r}")
    base, *fields = tok.split(".")
    value = _scope(scopes, base)[base] if base else dot
    for field in filter(None, fields):
        if not isinstance(value, dict) or field not in value:
            raise ValueError(f"unsupported field .{field}")  # Ollama's data has no other fields we rely on
        value = value[field]
    return value


def _eval(toks: list[str], dot, scopes: list[dict]):
    """A pipeline without pipes or parentheses: an operand, or eq/and applied to operands."""
    if not toks:
        raise ValueError("missing value in Go template action")
    args = [_value(t, dot, scopes) for t in toks[1:]]
    if toks[0] == "eq" and len(args) >= 2:
        return any(args[0] == a for a in args[1:])
    if toks[0] == "and" and args:
        return next((a for a in args if not a), args[-1])  # Go: the first empty argument, else the last
    if len(toks) == 1:
        return _value(toks[0], dot, scopes)
    raise ValueError(f"unsupported Go template pipeline {toks}")


def _parse(items: list) -> list:
    """Text and token lists -> nodes: text, ["print", toks], ["set", var, declare, toks], and
    ["if", [[cond, body], ...]] / ["range", [[toks, body]]], where cond None is the else branch."""
    root: list = []
    stack: list = [["root", [[None, root]]]]
    for item in items:
        kind, branches = stack[-1]
        body = branches[-1][1]
        if isinstance(item, str):
            body.append(item)
        elif item[0] in ("if", "range"):
            body.append([item[0], [[item[1:], []]]])
            stack.append(body[-1])
        elif item[0] == "else" and kind == "if" and branches[-1][0] is not None:
            branches.append([item[2:] if item[1:2] == ["if"] else None, []])
        elif item == ["end"] and kind != "root":
            stack.pop()
        elif len(item) > 2 and item[0][0] == "$" and item[1] in (":=", "="):
            body.append(["set", item[0], item[1] == ":=", item[2:]])
        elif item[0] in ("else", "end"):
            raise ValueError(f"misplaced {item[0]} in Go template")
        else:
            body.append(["print", item])
    if len(stack) > 1:
        raise ValueError(f"missing {{{{ end }}}} for {stack[-1][0]}")
    return root


def _run(nodes: list, dot, scopes: list[dict], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "print":
            value = _eval(node[1], dot, scopes)
            if not isinstance(value, str):
                raise ValueError(f"printing a {type(value).__name__} is not supported")
            out.append(value)
        elif node[0] == "set":  # `:=` declares in the current block, `=` assigns the nearest (Go >= 1.11)
            (scopes[-1] if node[2] else _scope(scopes, node[1]))[node[1]] = _eval(node[3], dot, scopes)
        elif node[0] == "if":  # Python truthiness matches Go's for strings, lists, bools and None
            body = next((b for cond, b in node[1] if cond is None or _eval(cond, dot, scopes)), [])
            _run(body, dot, [*scopes, {}], out)
        else:
            items = _eval(node[1][0][0], dot, scopes)
            if not isinstance(items, list):
                raise ValueError("range over something that is not a list")
            for item in items:
                _run(node[1][0][1], item, [*scopes, {}], out)


def ollama_values(messages: list[dict], system: str | None) -> dict:
    """The data Ollama executes a chat TEMPLATE with: {"System": ..., "Messages": [{"Role", "Content"}, ...]}."""
    # Ollama's server: the Modelfile SYSTEM is prepended when the request starts without a system message.
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    collated: list[dict] = []
    for message in messages:  # Ollama's collate: merge consecutive same-role messages (tool results excepted)
        if collated and collated[-1]["Role"] == message["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + message["content"]
        else:
            collated.append({"Role": message["role"], "Content": message["content"]})
    return {"System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"), "Messages": collated}


def render_go(template: str, messages: list[dict], system: str | None) -> str:
    """Render a Go chat template as Ollama would; `system` is the Modelfile's SYSTEM (used when no message is)."""
    items: list = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        text = text.lstrip(" \t\r\n") if trim_next else text  # Go trims all adjacent white space
        text = text.rstrip(" \t\r\n") if m.group(1) else text
        items += [text] if text else []
        items.append(_TOKEN.findall(m.group(2)) or ["{{ }}"])  # an empty action is refused when evaluated
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:].lstrip(" \t\r\n") if trim_next else template[pos:]
    if "{{" in tail:
        raise ValueError("unclosed {{ in Go template")
    nodes = _parse(items + ([tail] if tail else []))
    data = ollama_values(messages, system)
    out: list[str] = []
    _run(nodes, data, [{"$": data}], out)
    return "".join(out)
