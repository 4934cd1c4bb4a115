"""`qlora-kit server [--host 127.0.0.1] [--port 8765] [--root DIR] [--token-file F]`: the local training job server.

Not `serve` (which serves a GGUF file for chat): this one queues training jobs and runs them one at a time, for
any tool that speaks HTTP (see docs/server.md). It listens on the loopback interface unless
--host says otherwise, and then it requires --token-file.
"""

from __future__ import annotations


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "server", parents=[common], help="run the local training job server (HTTP API; queue, events, cancel)",
        description="Queue, run (one at a time, each in its own process), stream, cancel and resume training jobs "
                    "over HTTP. Jobs, run directories and the queue live under --root, so a restart loses nothing. "
                    "OpenAPI schema at /openapi.json.")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default: 127.0.0.1, this machine only; any other needs --token-file)")
    p.add_argument("--port", type=int, default=8765, metavar="N", help="TCP port to listen on (default: 8765)")
    p.add_argument("--root", default="qlora-kit-server",
                   help="directory for jobs and run directories; every path a client names must lie inside it "
                        "(default: ./qlora-kit-server)")
    p.add_argument("--token-file", metavar="F",
                   help="file holding the bearer token clients must send (default: none; no token, which only a "
                        "loopback --host allows)")
    p.add_argument("--data-dir", dest="data_dirs", action="append", default=[], metavar="DIR",
                   help="also allow data and models from this directory (repeatable; default: only paths "
                        "under --root)")
    p.add_argument("--allow-remote-code", action="store_true",
                   help="accept recipes with model.trust_remote_code: true (runs the model repository's code)")
    p.add_argument("--max-body", default="1MiB", metavar="SIZE", help="largest request body (default: 1MiB)")
    p.add_argument("--no-plugins", action="store_true", help="jobs load no hook plugins of installed packages")
    p.add_argument("--models", metavar="FILE",
                   help="model table for the OpenAI-compatible routes (YAML: alias -> {recipe: PATH} or {base: "
                        "MODEL}) (default: each builtin: model by its name and each shipped recipe by its file stem)")
    p.add_argument("--max-file", default="512MiB", metavar="SIZE", help="largest upload to /v1/files (default: 512MiB)")
    p.add_argument("--max-files", type=int, default=1000, metavar="N",
                   help="most files /v1/files keeps (default: 1000)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from qlora_kit.errors import UsageError
    from qlora_kit.server.security import is_loopback
    from qlora_kit.recipe.sizes import parse_size

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port}: not a TCP port")
    token = _read_token(args.token_file) if args.token_file else None
    if token is None and not is_loopback(args.host):
        raise UsageError(f"--host {args.host}: listening beyond this machine needs a bearer token; "
                         "give --token-file FILE (or keep the default --host 127.0.0.1)")
    sizes = {}
    for flag in ("max_body", "max_file"):
        try:
            sizes[flag] = parse_size(getattr(args, flag))
        except ValueError as exc:
            raise UsageError(f"--{flag.replace('_', '-')}: {exc}") from None
    if args.max_files < 1:
        raise UsageError(f"--max-files {args.max_files}: must be at least 1")
    for d in args.data_dirs:
        if not Path(d).is_dir():
            raise UsageError(f"--data-dir {d}: no such directory")
    root = Path(args.root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--root {args.root}: cannot create it: {exc.strerror or exc}") from None

    import uvicorn

    from qlora_kit.server.app import ServerConfig, create_app

    app = create_app(ServerConfig(root=root, token=token, allow_remote_code=args.allow_remote_code,
                                  data_dirs=[Path(d) for d in args.data_dirs], max_body=sizes["max_body"],
                                  plugins=not args.no_plugins, models=Path(args.models) if args.models else None,
                                  max_file=sizes["max_file"], max_files=args.max_files))
    print(f"qlora-kit server at http://{args.host}:{args.port} (root {root.resolve()}; "
          f"{'token required' if token else 'no token'}; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0


def _read_token(path: str) -> str:
    from qlora_kit.errors import UsageError

    try:
        token = open(path, encoding="utf-8").read().strip()
    except OSError as exc:
        raise UsageError(f"--token-file {path}: cannot read it: {exc.strerror or exc}") from None
    if len(token) < 16:
        raise UsageError(f"--token-file {path}: the token must be at least 16 characters "
                         "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE)")
    return token
