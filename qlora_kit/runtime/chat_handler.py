"""A llama-cpp-python chat handler that returns OpenAI-style `tool_calls` (issue #27), for `chat` and `serve`.

llama-cpp-python renders a GGUF's own chat template with the request's `tools` (Jinja2ChatFormatter), but returns
what the model wrote as plain content: a call stays `<tool_call>{...}</tool_call>` text that no OpenAI client
reads. This handler renders and generates exactly as the GGUF's default handler does, then parses the calls in the
syntax of the template's family (runtime/tool_calls.py) into `message.tool_calls` with finish_reason "tool_calls".
Requests without tools are passed through untouched. A streamed request with tools is answered whole, as one
chunk with the calls and a final chunk, because a call can only be parsed once it is complete.

Incoming assistant messages carry arguments as JSON text (OpenAI's wire format); the templates we train print
them as objects (sorted, compact: data/templates_tools.py), so they are parsed back before rendering.
"""

from __future__ import annotations

import json

HANDLER = "qlora-kit-tools"


def register() -> str:
    """Register the handler with llama-cpp-python (once per process); its name, for `chat_format=`."""
    from llama_cpp import llama_chat_format

    registry = llama_chat_format.LlamaChatCompletionHandlerRegistry()
    registry.register_chat_completion_handler(HANDLER, handle, overwrite=True)
    return HANDLER


def _objects(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if calls:
            m = {**m, "tool_calls": [_parsed_call(c) for c in calls]}
        out.append(m)
    return out


def _parsed_call(call: dict) -> dict:
    fn = call.get("function") or {}
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            value = json.loads(args)
        except json.JSONDecodeError:
            return call  # printed as given: the model sees what the client sent
        if isinstance(value, dict):
            return {**call, "function": {**fn, "arguments": value}}
    return call


def handle(*, llama, messages, tools=None, stream: bool = False, **kwargs):
    from llama_cpp import llama_chat_format

    from qlora_kit.runtime.tool_calls import family_for_template

    # The GGUF's own template, as llama-cpp-python builds it; without one, its own fallback (llama-2).
    default = llama._chat_handlers.get("chat_template.default") or \
        llama_chat_format.get_chat_completion_handler("llama-2")
    family = family_for_template(llama.metadata.get("tokenizer.chat_template", "")) if tools else None
    if family is None:
        return default(llama=llama, messages=messages, tools=tools, stream=stream, **kwargs)
    response = default(llama=llama, messages=_objects(messages), tools=tools, stream=False, **kwargs)
    response = with_tool_calls(response, family)
    return _as_stream(response) if stream else response


def with_tool_calls(response: dict, family: str) -> dict:
    """A chat-completion response whose first choice's content is parsed for calls (see the module docstring)."""
    from qlora_kit.runtime.tool_calls import parse_tool_calls

    choice = response["choices"][0]
    parsed = parse_tool_calls(choice["message"].get("content") or "", family)
    message = {"role": "assistant", "content": parsed.content or None}
    if parsed.reasoning:
        message["reasoning_content"] = parsed.reasoning
    if parsed.tool_calls:
        message["tool_calls"] = parsed.tool_calls
    finish = "tool_calls" if parsed.tool_calls else choice.get("finish_reason")
    return {**response, "choices": [{**choice, "message": message, "finish_reason": finish}]}


def _as_stream(response: dict):
    base = {k: response[k] for k in ("id", "created", "model") if k in response}
    message = response["choices"][0]["message"]
    delta = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
    yield {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta,
                                                                   "logprobs": None, "finish_reason": None}]}
    yield {**base, "object": "chat.completion.chunk", "choices": [{
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": response["choices"][0]["finish_reason"]}]}


class NullContent:
    """ASGI middleware for `serve`: OpenAI clients send an assistant message that calls tools with `content: null`
    (the OpenAI API's own shape, which the second request of every tool loop carries); llama-cpp-python's server
    schema requires a string there and answers 500. The body of /chat/completions requests gets "" instead."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        body = _null_content_to_empty(body)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # what follows the body: a disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        await self.app({**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}, replay, send)


def _null_content_to_empty(body: bytes) -> bytes:
    try:
        request = json.loads(body)
    except ValueError:
        return body  # the server answers a bad body itself
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list):
        return body
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant" and m.get("content") is None:
            m["content"] = ""
    return json.dumps(request).encode()
