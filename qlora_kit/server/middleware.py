"""The server's ASGI middleware: the bearer token, and the limit on request bodies. Both answer in the shape every
client of the server reads: `detail` for /v1/jobs clients, OpenAI's `error` object for OpenAI clients."""

from __future__ import annotations

import json

from qlora_kit.server.security import token_matches


class BearerAuth:
    """Every request (the OpenAPI schema and unknown paths too) needs `Authorization: Bearer TOKEN`."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not token_matches(header, self.token):
                return await send_json(send, 401, "a bearer token is required: Authorization: Bearer TOKEN",
                                       [(b"www-authenticate", b"Bearer")], code="invalid_api_key")
        return await self.app(scope, receive, send)


async def send_json(send, status: int, detail: str, headers: list | None = None, code: str | None = None) -> None:
    """`detail` for /v1/jobs clients, and the same in OpenAI's `error` shape for OpenAI clients."""
    error = {"message": detail, "type": "invalid_request_error", "param": None, "code": code}
    body = json.dumps({"detail": detail, "error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuses request bodies over `limit` bytes (`uploads[path]` for POSTs to an upload path) with 413: by
    Content-Length before reading anything, and by counting while reading for bodies sent without one (chunked)."""

    def __init__(self, app, limit: int, uploads: dict[str, int] | None = None):
        self.app, self.default, self.uploads = app, limit, uploads or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.uploads.get(scope["path"], self.default) if scope["method"] == "POST" else self.default
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await self._too_large(send, limit)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await self._too_large(send, limit)

    async def _too_large(self, send, limit: int):
        await send_json(send, 413, f"request body larger than {limit} bytes", [(b"connection", b"close")],
                        code="request_too_large")


class _TooLarge(Exception):
    pass
