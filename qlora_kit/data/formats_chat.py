"""Conversation formats: OpenAI chat fine-tuning JSONL (with function calling and reasoning), ShareGPT (with
function_call/observation turns) and Alpaca. Tool calls and reasoning are parsed by data.tool_messages."""

from __future__ import annotations

from qlora_kit.data.example import (OPENAI_MESSAGE_KEYS, ROLES, Example, RowProblem, _check_conversation, _text,
                                    register)
from qlora_kit.data.tool_messages import (assistant_calls, check_flow, json_value, parse_call, parse_tools,
                                         split_reasoning)

SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "model": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "function_call": "assistant",
}


def row_tools(row: dict) -> list[dict] | None:
    """OpenAI's `tools`, or the legacy `functions` (not both)."""
    if row.get("tools") and row.get("functions"):
        raise RowProblem("bad_tool_call", "the row has both 'tools' and 'functions'; keep one")
    return parse_tools(row.get("tools") or row.get("functions"), "'tools'" if row.get("tools") else "'functions'")


def _message(m: object, i: int, what: str) -> dict:
    if not isinstance(m, dict):
        raise RowProblem("bad_type", f"{what} must be an object")
    extra = sorted(set(m) - OPENAI_MESSAGE_KEYS)
    if extra:
        raise RowProblem("unknown_key", f"{what} has unknown key(s) {', '.join(extra)}")
    role = m.get("role")
    if role not in ROLES:
        raise RowProblem("unknown_role", f"{what} has role {role!r}; allowed: {', '.join(ROLES)}")
    role = "tool" if role == "function" else role  # the legacy function-calling result
    calls = assistant_calls(m, what) if role == "assistant" else None
    if role != "assistant" and (m.get("tool_calls") or m.get("function_call") or "reasoning_content" in m):
        raise RowProblem("bad_tool_call", f"{what} ({role}): only assistant messages have tool_calls, "
                         "function_call or reasoning_content")
    if m.get("content") in (None, "") and not calls:
        raise RowProblem("missing_content", f"{what} ({role}) has no content")
    msg = {"role": role, "content": _text(m.get("content") or "", f"{what}.content")}
    if role == "assistant":
        msg["content"], reasoning = split_reasoning(msg["content"], m.get("reasoning_content"), what)
        if reasoning is not None:
            msg["reasoning_content"] = reasoning
    if calls:
        msg["tool_calls"] = calls
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if m.get(key) is not None:
                if not isinstance(m[key], str):
                    raise RowProblem("bad_type", f"{what}.{key} must be a string")
                msg[key] = m[key]
    if "weight" in m:
        if role != "assistant" or m["weight"] not in (0, 1):
            raise RowProblem("bad_type", f"{what}.weight must be 0 or 1, on assistant messages only")
        msg["weight"] = int(m["weight"])
    return msg


def openai_messages(messages: object, what: str = "") -> list[dict]:
    """Parse a list of OpenAI messages (no conversation-level checks); `what` prefixes the problem details."""
    if not isinstance(messages, list) or not messages:
        raise RowProblem("no_messages", f"{what or repr('messages')} must be a non-empty list")
    try:
        return [_message(m, i, f"messages[{i}]") for i, m in enumerate(messages)]
    except RowProblem as p:
        raise RowProblem(p.kind, f"{what}: {p.detail}" if what else p.detail) from None


@register("openai", ("messages",),
          "OpenAI chat fine-tuning JSONL: {'messages': [{'role', 'content'}, ...]}, with 'tools' and tool_calls")
def _openai(row: dict) -> Example:
    messages = openai_messages(row["messages"])
    tools = row_tools(row)
    parallel = row.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise RowProblem("bad_type", f"'parallel_tool_calls' must be true or false, not {parallel!r}")
    check_flow(messages, tools, parallel)
    return Example(messages=_check_conversation(messages), tools=tools)


def _sharegpt_calls(value: object, what: str) -> list[dict]:
    calls = json_value(value, what)
    return [parse_call(c, f"{what}[{j}]" if isinstance(calls, list) else what)
            for j, c in enumerate(calls if isinstance(calls, list) else [calls])]


@register("sharegpt", ("conversations",),
          "ShareGPT: {'conversations': [{'from': 'human'|'gpt'|'function_call'|'observation', 'value'}], 'tools'}")
def _sharegpt(row: dict) -> Example:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise RowProblem("no_messages", "'conversations' must be a non-empty list")
    out: list[dict] = []
    labels: list[str] = []  # the turn each message came from, for problems
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise RowProblem("bad_type", f"conversations[{i}] must be an object")
        source = str(t.get("from", "")).lower()
        role = SHAREGPT_ROLES.get(source)
        if role is None:
            raise RowProblem("unknown_role", f"conversations[{i}] has from={t.get('from')!r}; "
                             f"allowed: {', '.join(sorted(SHAREGPT_ROLES))}")
        if t.get("value") in (None, ""):
            raise RowProblem("missing_content", f"conversations[{i}] ({t.get('from')}) has no value")
        if source == "function_call":  # the assistant's call(s), as JSON: joins the assistant text just before it
            calls = _sharegpt_calls(t["value"], f"conversations[{i}].value")
            if out and out[-1]["role"] == "assistant" and "tool_calls" not in out[-1]:
                out[-1]["tool_calls"] = calls
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": calls})
                labels.append(f"conversations[{i}]")
            continue
        message = {"role": role, "content": _text(t["value"], f"conversations[{i}].value")}
        if role == "assistant":
            message["content"], reasoning = split_reasoning(message["content"], None, f"conversations[{i}]")
            if reasoning is not None:
                message["reasoning_content"] = reasoning
        out.append(message)
        labels.append(f"conversations[{i}]")
    tools = parse_tools(row.get("tools"), "'tools'")
    check_flow(out, tools, labels=labels)
    return Example(messages=_check_conversation(out), tools=tools)


@register("alpaca", ("instruction", "output"), "Alpaca: {'instruction', 'input' (optional), 'output'}")
def _alpaca(row: dict) -> Example:
    instruction = _text(row["instruction"] or "", "instruction").strip()
    extra = _text(row.get("input") or "", "input").strip()
    output = _text(row["output"] or "", "output")
    if not instruction:
        raise RowProblem("missing_content", "'instruction' is empty")
    if not output.strip():
        raise RowProblem("no_assistant_turn", "'output' is empty: nothing to train on")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return Example(messages=[{"role": "user", "content": user}, {"role": "assistant", "content": output}])
