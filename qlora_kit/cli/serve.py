"""`qlora-kit serve GGUF`: an OpenAI-compatible HTTP endpoint on this machine, through llama-cpp-python's server.

So the last step of the OpenAI fine-tuning guide ("use the fine-tuned model" with the OpenAI client) works
locally: point the client's base_url at http://127.0.0.1:PORT/v1 and ask for the model by its alias. Listens on
the loopback interface unless --host says otherwise; the GGUF's own chat template formats conversations, and a
request with `tools` gets the calls the model writes back as OpenAI `tool_calls` (runtime/chat_handler.py).
"""

from __future__ import annotations


def register(subparsers, common) -> None:
    p = subparsers.add_parser("serve", parents=[common], help="serve a GGUF file over an OpenAI-compatible API",
                              description="Serve /v1/chat/completions, /v1/completions and /v1/models for one GGUF "
                                          "file (Ctrl-C stops it).")
    p.add_argument("gguf", help="a .gguf file")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, metavar="N", help="TCP port to listen on (default: 8000)")
    p.add_argument("--name", help="model alias clients ask for (default: the file name without .gguf)")
    p.add_argument("--n-ctx", type=int, default=2048, metavar="N",
                   help="context window in tokens per request: prompt and reply (default: 2048)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from qlora_kit.errors import UsageError

    path = Path(args.gguf)
    if not path.is_file():
        raise UsageError(f"{args.gguf}: no such file")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: not a TCP port")
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from qlora_kit.native.crash import note
    from qlora_kit.native.loader import prepare
    from qlora_kit.runtime.chat_handler import NullContent, register as tool_handler

    prepare()  # llama-cpp-python's server constructs its own Llama: the same workarounds as every other load
    note(doing="llama.cpp was serving", file=str(path))
    alias = args.name or path.stem
    # The GGUF's own template, plus OpenAI-style tool_calls parsed from the reply when a request has tools.
    model = ModelSettings(model=str(path), model_alias=alias, n_ctx=args.n_ctx, n_gpu_layers=0, verbose=False,
                          chat_format=tool_handler())
    app = create_app(server_settings=ServerSettings(host=args.host, port=args.port), model_settings=[model])
    print(f"serving {alias!r} at http://{args.host}:{args.port}/v1 (OpenAI-compatible; Ctrl-C stops)", flush=True)
    uvicorn.run(NullContent(app), host=args.host, port=args.port, log_level="warning")
    return 0
