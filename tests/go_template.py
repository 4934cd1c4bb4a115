"""render_go: a Go text/template interpreter for exactly the subset the built-in Ollama templates use
(qlora_kit/data/templates.py: OLLAMA_TEMPLATES), and nothing more; the tests use it to prove each Go template
renders a conversation to the same text as its Jinja twin. ollama_values builds the data Ollama executes a chat
TEMPLATE with (template/template.go `collate`, convertMessagesForTemplate, convertToolsForTemplate), and go_json
prints values as Go's encoding/json does (which is how Ollama prints tools and tool call arguments)."""

from __future__ import annotations

import json
import re
from decimal import Decimal

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
    if tok in ("true", "false"):
        return tok == "true"
    if tok[0] not in "$.":
        raise ValueError(f"unsupported Go template operand {tok!r}")
    base, *fields = tok.split(".")
    value = _scope(scopes, base)[base] if base else dot
    for field in filter(None, fields):
        if not isinstance(value, dict) or field not in value:
            raise ValueError(f"unsupported field .{field}")  # Ollama's data has no other fields we rely on
        value = value[field]
    return value


def _basic(value):
    if isinstance(value, (dict, list)):  # Go's eq/ne compare basic values only (strings here)
        raise ValueError("eq/ne on something that is not a string or bool")
    return value


def _print(args: list):
    if not all(isinstance(a, str) for a in args):  # fmt.Sprint puts spaces between non-string operands
        raise ValueError("print of something that is not a string")
    return "".join(args)


_FUNCS = {
    "eq": lambda a: len(a) >= 2 and any(_basic(a[0]) == _basic(x) for x in a[1:]),
    "ne": lambda a: len(a) == 2 and _basic(a[0]) != _basic(a[1]),
    "and": lambda a: next((x for x in a if not x), a[-1]),  # Go: the first empty argument, else the last
    "or": lambda a: next((x for x in a if x), a[-1]),  # Go: the first non-empty argument, else the last
    "not": lambda a: len(a) == 1 and not a[0],
    "json": lambda a: len(a) == 1 and go_json(a[0]),  # Ollama's template func: json.Marshal
    "print": _print,
}
_ARITY = {"eq": 2, "ne": 2, "and": 1, "or": 1, "not": 1, "json": 1, "print": 1}


def _eval(toks: list[str], dot, scopes: list[dict]):
    """A pipeline without pipes or parentheses: an operand, or a function (eq, ne, and, or, not, json, print)
    applied to operands."""
    if not toks:
        raise ValueError("missing value in Go template action")
    args = [_value(t, dot, scopes) for t in toks[1:]]
    if toks[0] in _FUNCS and len(args) >= _ARITY[toks[0]]:
        if toks[0] in ("ne", "not", "json") and len(args) != _ARITY[toks[0]]:
            raise ValueError(f"wrong number of arguments for {toks[0]}")
        return _FUNCS[toks[0]](args)
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
            if isinstance(value, (_GoDict, _GoList)):  # a Go value with a String method (Ollama's JSON types)
                value = go_json(value)
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


class _GoDict(dict):
    """A Go struct (fields in declaration order) or a Go value whose String method prints it as JSON."""


class _GoList(list):
    """Ollama's templateTools: a slice whose String method prints it as JSON."""


def _go_float(x: float) -> str:
    # encoding/json floatEncoder: positional for 1e-6 <= |x| < 1e21, else exponent with e-07 -> e-7.
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))
    if 1e-6 <= abs(x) < 1e21:
        return format(Decimal(repr(x)), "f")
    return re.sub(r"e([-+])0(\d)$", r"e\1\2", repr(x))


def go_json(value) -> str:
    """json.Marshal as Ollama prints tools and arguments: compact, map keys sorted (struct fields in order),
    < > & U+2028 U+2029 escaped, numbers as float64 (what JSON numbers decode to in a Go `any`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _go_float(float(value)) if isinstance(value, float) or abs(value) >= 2 ** 53 else str(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                              ("\u2029", "\\u2029")):
            text = text.replace(char, escaped)
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    if isinstance(value, dict):
        items = value.items() if isinstance(value, _GoDict) else sorted(value.items())
        return "{" + ",".join(go_json(str(k)) + ":" + go_json(v) for k, v in items) + "}"
    raise ValueError(f"no JSON for a {type(value).__name__}")


def _present(d: dict, key: str) -> bool:
    return d.get(key) is not None


def _property(p: dict) -> _GoDict:
    """api.ToolProperty: what Ollama keeps of a JSON-schema property, in its field order (omitempty fields)."""
    out = _GoDict()
    if p.get("anyOf"):
        out["anyOf"] = [_property(a) for a in p["anyOf"]]
    if _present(p, "type"):  # PropertyType: one type prints as a string, several as a list
        types = [p["type"]] if isinstance(p["type"], str) else list(p["type"])
        if types:
            out["type"] = types[0] if len(types) == 1 else types
    if _present(p, "items"):
        out["items"] = p["items"]
    for key in ("description", "enum"):
        if p.get(key):
            out[key] = p[key]
    if _present(p, "properties"):  # a nested ToolPropertiesMap keeps insertion order
        out["properties"] = _GoDict((k, _property(v)) for k, v in p["properties"].items())
    if p.get("required"):
        out["required"] = p["required"]
    return out


def _tool(tool: dict) -> _GoDict:
    """templateTool (template/template.go): a tool as the template prints it with {{ . }}."""
    function = tool.get("function") or {}
    params = function.get("parameters") or {}
    parameters = _GoDict(type=params.get("type") or "")
    for key in ("$defs", "items"):
        if _present(params, key):
            parameters[key] = params[key]
    if params.get("required"):
        parameters["required"] = params["required"]
    props = params.get("properties")  # templateProperties: a plain map, so its keys print sorted
    parameters["properties"] = None if props is None else {k: _property(v) for k, v in props.items()}
    out = _GoDict(type=tool.get("type") or "")
    if _present(tool, "items"):
        out["items"] = tool["items"]
    out["function"] = _GoDict(name=function.get("name") or "", description=function.get("description") or "",
                              parameters=parameters)
    return out


def _tool_call(call: dict) -> dict:
    function = call.get("function", call)
    arguments = function.get("arguments") or {}
    if isinstance(arguments, str):  # OpenAI's wire format; Ollama's OpenAI layer parses it
        arguments = json.loads(arguments)
    # templateArgs: a plain map whose String method prints JSON (keys sorted)
    return {"ID": call.get("id", ""), "Function": {"Index": 0, "Name": function["name"],
                                                    "Arguments": _GoDict(sorted(arguments.items()))}}


def ollama_values(messages: list[dict], system: str | None = None, tools: list[dict] | None = None) -> dict:
    """The data Ollama executes a chat TEMPLATE with: {"System", "Messages": [{"Role", "Content", "Thinking",
    "ToolCalls", "ToolName", "ToolCallID"}, ...], "Tools"}; messages in the contract's (Hugging Face's) format,
    reasoning_content standing for Ollama's "thinking"."""
    # Ollama's server: the Modelfile SYSTEM is prepended when the request starts without a system message.
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    collated: list[dict] = []
    for message in messages:  # Ollama's collate: merge consecutive same-role messages' content (tool results excepted)
        if collated and collated[-1]["Role"] == message["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + message["content"]
        else:
            collated.append({"Role": message["role"], "Content": message["content"],
                             "Thinking": message.get("reasoning_content") or "",
                             "ToolCalls": [_tool_call(c) for c in message.get("tool_calls") or []],
                             "ToolName": message.get("name") or "", "ToolCallID": message.get("tool_call_id") or ""})
    return {"System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"), "Messages": collated,
            "Tools": _GoList(_tool(t) for t in tools) if tools else None}


def parse_go(template: str) -> list:
    """Go template source -> the node tree `_parse` describes (Go's trim markers applied)."""
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
    return _parse(items + ([tail] if tail else []))


def render_go(template: str, messages: list[dict] | dict, system: str | None = None,
              tools: list[dict] | None = None) -> str:
    """Render a Go chat template as Ollama would; `system` is the Modelfile's SYSTEM (used when no message is).
    `messages` may instead be ollama_values(...) already built."""
    nodes = parse_go(template)
    data = messages if isinstance(messages, dict) else ollama_values(messages, system, tools)
    out: list[str] = []
    _run(nodes, data, [{"$": data}], out)
    return "".join(out)


def _api_message(message: dict) -> dict:
    """A contract (Hugging Face style) message as Ollama's api.Message JSON."""
    calls = [{"function": {"name": c.get("function", c)["name"],
                           "arguments": (lambda a: json.loads(a) if isinstance(a, str) else a or {})(
                               c.get("function", c).get("arguments"))}} for c in message.get("tool_calls") or []]
    return {"role": message["role"], "content": message["content"], "thinking": message.get("reasoning_content", ""),
            "tool_calls": calls, "tool_name": message.get("name", ""), "tool_call_id": message.get("tool_call_id", "")}


def go_renderer(work_dir):
    """Build tests/ollama_render.go (Go's text/template on Ollama's template data) in work_dir; return
    render([(template, messages, system, tools), ...]) -> texts, or None when Go is not installed."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    go = shutil.which("go")
    if go is None:
        return None
    work = Path(work_dir)
    env = {**os.environ, "GOCACHE": os.environ.get("GOCACHE") or str(work / "cache"), "GOPATH": str(work / "gopath"),
           "GO111MODULE": "off", "GOPROXY": "off", "GOFLAGS": ""}  # standard library only: nothing to download
    subprocess.run([go, "build", "-o", str(work / "render"), str(Path(__file__).with_name("ollama_render.go"))],
                   check=True, env=env, capture_output=True, timeout=300)

    def render(cases: list[tuple]) -> list[str]:
        payload = json.dumps([{"template": t, "system": s or "", "messages": [_api_message(m) for m in msgs],
                               "tools": tools} for t, msgs, s, tools in cases])
        done = subprocess.run([str(work / "render")], input=payload, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(done.stderr)
        return json.loads(done.stdout)

    return render
