"""Tool calls, tool results and reasoning traces in a conversation: parsed, checked and normalised for the chat
template (issue #27). Never dropped: a row that has them either renders them or is refused.

The normalised shape is what Hugging Face chat templates expect (Qwen2.5/3, Llama 3.1, Mistral):
- `tools`: [{"type": "function", "function": {"name", "description", "parameters"}}] on the Example;
- an assistant message's `tool_calls`: [{"id" (when the data gave one), "type": "function",
  "function": {"name", "arguments": dict}}]: OpenAI sends arguments as JSON text, templates print a dict;
- a tool message's `tool_call_id` (when given) and `name` (the function it answers, resolved from the call);
- an assistant message's `reasoning_content`: its thinking without tags, from the key of that name or from a
  `<think>...</think>` block opening its content.

Checks, each a one-line RowProblem naming the message: arguments are a JSON object, each call's name is among the
row's tools, call ids are unique, each tool message answers an earlier call (by id, else the oldest open one) and
results follow their calls before the conversation moves on; `parallel_tool_calls: false` allows one call a turn.
"""

from __future__ import annotations

import json
import re

from qlora_kit.data.example import RowProblem

THINK = re.compile(r"\s*<think>(.*?)</think>\s*", re.S)


def _problem(detail: str) -> RowProblem:
    return RowProblem("bad_tool_call", detail)


def json_value(value: object, what: str) -> object:
    """A value OpenAI sends as JSON text (arguments, ShareGPT's tools) or as the object itself."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise _problem(f"{what} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    return value


def parse_tools(value: object, what: str) -> list[dict] | None:
    """A row's tool list: OpenAI `tools` ([{type: function, function: {...}}]), legacy `functions` or ShareGPT's
    list of bare function objects (possibly as JSON text), normalised to OpenAI's shape; None when empty."""
    value = json_value(value, what)
    if value in (None, []):
        return None
    if not isinstance(value, list):
        raise _problem(f"{what} must be a list of tools, not {type(value).__name__}")
    tools = []
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _problem(f"{what}[{i}] must be a function with a name ({{'type': 'function', 'function': "
                           "{'name', 'description', 'parameters'}})")
        if isinstance(tool, dict) and tool.get("type", "function") != "function":
            raise _problem(f"{what}[{i}] has type {tool.get('type')!r}; only 'function' tools are supported")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise _problem(f"{what}[{i}].parameters must be a JSON schema object")
        tools.append({"type": "function", "function": fn})
    names = [t["function"]["name"] for t in tools]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _problem(f"{what} defines {', '.join(twice)} more than once")
    return tools


def parse_call(value: object, what: str) -> dict:
    """One call: OpenAI's {id, type, function: {name, arguments}} or a bare {name, arguments} (legacy, ShareGPT)."""
    if not isinstance(value, dict):
        raise _problem(f"{what} must be an object")
    fn = value["function"] if "function" in value else value
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise _problem(f"{what} has no function name")
    if value.get("type", "function") != "function":
        raise _problem(f"{what} has type {value.get('type')!r}; only 'function' calls are supported")
    args = json_value(fn.get("arguments", {}), f"{what}.arguments")
    if not isinstance(args, dict):
        raise _problem(f"{what}.arguments must be a JSON object, not {type(args).__name__}")
    call = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if "id" in value and value["id"] is not None:
        if not isinstance(value["id"], str) or not value["id"]:
            raise _problem(f"{what}.id must be a non-empty string")
        call = {"id": value["id"], **call}
    return call


def assistant_calls(message: dict, what: str) -> list[dict] | None:
    """The calls of an assistant message: `tool_calls`, or legacy `function_call` (one call)."""
    if message.get("tool_calls") and message.get("function_call"):
        raise _problem(f"{what} has both tool_calls and function_call; keep one")
    if message.get("function_call"):
        return [parse_call(message["function_call"], f"{what}.function_call")]
    calls = message.get("tool_calls")
    if calls in (None, []):
        return None
    if not isinstance(calls, list):
        raise _problem(f"{what}.tool_calls must be a list")
    return [parse_call(c, f"{what}.tool_calls[{j}]") for j, c in enumerate(calls)]


def split_reasoning(content: str, reasoning: object, what: str) -> tuple[str, str | None]:
    """(content, reasoning): the `reasoning_content` key, or a <think>...</think> block opening the content."""
    block = THINK.match(content)
    if reasoning is not None:
        if not isinstance(reasoning, str):
            raise _problem(f"{what}.reasoning_content must be a string")
        if block:
            raise _problem(f"{what} has reasoning_content and a <think> block in its content; keep one")
        return content, reasoning.strip("\n")
    if block:
        return content[block.end():], block.group(1).strip("\n")
    return content, None


def check_flow(messages: list[dict], tools: list[dict] | None, parallel: bool = True,
               labels: list[str] | None = None) -> None:
    """Calls name a tool of the row, ids are unique, every tool message answers an open call (and gets its
    `name`), and open calls are answered before anyone else speaks. Mutates tool messages (name). `labels` names
    each message in problems (default messages[i]; ShareGPT names its turns)."""
    label = (lambda i: labels[i]) if labels else (lambda i: f"messages[{i}]")
    names = [t["function"]["name"] for t in tools or []]
    open_calls: list[tuple[str | None, str, int]] = []  # (id, name, message index), oldest first
    seen_ids: set[str] = set()
    for i, m in enumerate(messages):
        if m["role"] == "tool":
            m["name"] = _answer(open_calls, m, label(i))
            continue
        if open_calls:
            where = open_calls[0][2]
            raise _problem(f"{label(i)} ({m['role']}): the call(s) of {label(where)} have no tool result "
                           "before it; add a tool message answering each call")
        for j, call in enumerate(m.get("tool_calls") or []):
            what, name = f"{label(i)}.tool_calls[{j}]", call["function"]["name"]
            if not names:
                raise _problem(f"{what} calls {name!r} but the row has no tools list; add 'tools' with its definition")
            if name not in names:
                raise _problem(f"{what} calls {name!r}, which is not among the row's tools ({', '.join(names)})")
            if call.get("id") in seen_ids:
                raise _problem(f"{what}.id {call['id']!r} is used twice in the row")
            seen_ids.add(call.get("id"))
            open_calls.append((call.get("id"), name, i))
        if not parallel and len(m.get("tool_calls") or []) > 1:
            raise _problem(f"{label(i)} has {len(m['tool_calls'])} calls but parallel_tool_calls is false")


def _answer(open_calls: list, message: dict, what: str) -> str:
    """The name of the call a tool message answers (removed from open_calls): its id, else the oldest open call."""
    if not open_calls:
        raise _problem(f"{what} (tool) answers no earlier tool call")
    given = message.get("tool_call_id")
    if given is not None:
        match = next((k for k, c in enumerate(open_calls) if c[0] == given), None)
        if match is None:
            ids = ", ".join(repr(c[0]) for c in open_calls if c[0] is not None) or "none with ids"
            raise _problem(f"{what}.tool_call_id {given!r} answers no open call (open: {ids})")
    else:
        match = 0
    _, name, _ = open_calls.pop(match)
    if message.get("name") not in (None, name):
        raise _problem(f"{what} (tool) is named {message['name']!r} but answers a call of {name!r}")
    return name


def has_tools(example) -> bool:
    """Whether a conversation needs a template that renders tools."""
    every = (example.messages or []) + (example.chosen or []) + (example.rejected or []) + (example.completion or [])
    return bool(example.tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in every)
