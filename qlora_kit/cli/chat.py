"""`qlora-kit chat GGUF`: talk to an exported model in the terminal through llama-cpp-python.

The GGUF's own chat template (tokenizer.chat_template, written at export from the template used in training)
formats the conversation, so what you see here is what llama.cpp-based apps will do.
"""

from __future__ import annotations

import argparse


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
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from qlora_kit.errors import StageError, UsageError

    if not Path(args.gguf).is_file():
        raise UsageError(f"{args.gguf}: no such file")
    from qlora_kit.native.loader import load

    try:
        llm = load(Path(args.gguf), "answering with", n_ctx=args.n_ctx, n_gpu_layers=0, seed=0)
    except StageError as exc:  # the file the user named is not a model llama.cpp can run
        raise UsageError(str(exc)) from None
    messages = [{"role": "system", "content": args.system}] if args.system else []
    try:
        while True:
            text = args.prompt if args.prompt is not None else _ask()
            if not text:
                return 0
            messages.append({"role": "user", "content": text})
            reply = llm.create_chat_completion(messages=messages, max_tokens=args.max_new_tokens,
                                               temperature=args.temperature)["choices"][0]["message"]["content"]
            messages.append({"role": "assistant", "content": reply})
            print(reply if args.prompt is not None else f"assistant> {reply}", flush=True)
            if args.prompt is not None:
                return 0
    finally:
        llm.close()


def _ask() -> str:
    try:
        return input("you> ").strip()
    except EOFError:
        return ""
