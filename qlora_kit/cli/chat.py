"""`qlora-kit chat GGUF`: talk to an exported model in the terminal through llama-cpp-python.

The GGUF's own chat template (tokenizer.chat_template, written at export from the template used in training)
formats the conversation, so what you see here is what llama.cpp-based apps will do.

With --tools FILE the tools are given to the template and the calls the model writes are parsed in its template's
syntax (runtime/chat_handler.py, as `serve` does): --prompt prints the reply as one OpenAI-style assistant message
in JSON ({"role", "content", "tool_calls"}); the interactive chat asks you for each call's result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers, common) -> None:
    p = subparsers.add_parser("chat", parents=[common], help="chat with a GGUF file in the terminal",
                              description="Interactive chat (empty line or Ctrl-D to quit); with --prompt, answer "
                                          "one message and exit.")
    p.add_argument("gguf", help="a .gguf file")
    p.add_argument("--prompt", help="answer this one message and exit (default: none; an interactive chat)")
    p.add_argument("--system", help="system message (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                   help="longest reply in tokens, as eval's --max-new-tokens (default: 128)")
    # The old name, kept so scripts keep working; hidden, one name per concept in --help.
    p.add_argument("--max-tokens", dest="max_new_tokens", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--temperature", type=float, default=0.0, metavar="X",
                   help="sampling temperature; 0 is greedy decoding (default: 0.0)")
    p.add_argument("--n-ctx", type=int, default=2048, metavar="N",
                   help="context window in tokens: the conversation and the reply (default: 2048)")
    p.add_argument("--tools", metavar="FILE",
                   help="a JSON file of tools the model may call (OpenAI's list of {type: function, function: {name, "
                        "description, parameters}}, or an object with a 'tools' list); replies become OpenAI-style "
                        "messages with parsed tool_calls (default: none)")
    p.set_defaults(func=run)


def run(args) -> int:
    from qlora_kit.errors import StageError, UsageError

    if not Path(args.gguf).is_file():
        raise UsageError(f"{args.gguf}: no such file")
    from qlora_kit.native.loader import load
    from qlora_kit.runtime.chat_handler import register as tool_handler

    try:
        llm = load(Path(args.gguf), "answering with", n_ctx=args.n_ctx, n_gpu_layers=0, seed=0,
                   chat_format=tool_handler() if args.tools else None)
    except StageError as exc:  # the file the user named is not a model llama.cpp can run
        raise UsageError(str(exc)) from None
    try:
        tools = _tools(args.tools, llm) if args.tools else None
        messages = [{"role": "system", "content": args.system}] if args.system else []
        while True:
            text = args.prompt if args.prompt is not None else _ask()
            if not text:
                return 0
            messages.append({"role": "user", "content": text})
            while True:  # with tools: until the model answers without calling one
                message = llm.create_chat_completion(messages=messages, max_tokens=args.max_new_tokens, tools=tools,
                                                     temperature=args.temperature)["choices"][0]["message"]
                if tools is None:
                    reply = message["content"]
                    messages.append({"role": "assistant", "content": reply})
                    print(reply if args.prompt is not None else f"assistant> {reply}", flush=True)
                    break
                if args.prompt is not None:
                    print(json.dumps(message, ensure_ascii=False), flush=True)
                    return 0
                if not _ask_results(message, messages):
                    break
            if args.prompt is not None:
                return 0
    finally:
        llm.close()


def _tools(path: str, llm) -> list[dict]:
    """The tools of --tools FILE and the tool-call syntax of the GGUF's chat template, or a one-line UsageError."""
    from qlora_kit.data.example import RowProblem
    from qlora_kit.data.tool_messages import parse_tools
    from qlora_kit.errors import UsageError
    from qlora_kit.runtime.tool_calls import PARSERS, family_for_template

    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
        tools = parse_tools(value.get("tools") if isinstance(value, dict) else value, f"--tools {path}")
    except OSError as exc:
        raise UsageError(f"--tools {path}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--tools {path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RowProblem as p:
        raise UsageError(p.detail) from None
    if not tools:
        raise UsageError(f"--tools {path}: no tools in it")
    if family_for_template(llm.metadata.get("tokenizer.chat_template", "")) is None:
        raise UsageError(f"{Path(llm.model_path).name}: its chat template has no tool-call syntax qlora-kit can read "
                         f"(known: {', '.join(PARSERS)}); export a model trained with a template that renders tools")
    return tools


def _ask_results(message: dict, messages: list[dict]) -> bool:
    """Show the reply; for each call ask its result and add both to the conversation. False: no call to answer."""
    if message.get("content"):
        print(f"assistant> {message['content']}", flush=True)
    calls = message.get("tool_calls") or []
    messages.append({**message, "content": message.get("content") or ""})
    for c in calls:
        print(f"assistant> calls {c['function']['name']}({c['function']['arguments']})", flush=True)
        result = _ask(f"result of {c['function']['name']}> ")
        messages.append({"role": "tool", "tool_call_id": c["id"], "name": c["function"]["name"], "content": result})
    return bool(calls)


def _ask(prompt: str = "you> ") -> str:
    try:
        return input(prompt).strip()
    except EOFError:
        return ""
