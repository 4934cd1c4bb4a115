"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with the status codes the official
client maps to its exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
409 ConflictError, 422 UnprocessableEntityError). Every such answer carries `x-should-retry: false`: the client
retries 409 and 5xx by default, and none of these gets better by asking again."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

# Paths whose errors are OpenAI-shaped; /v1/jobs and the rest keep FastAPI's {"detail": ...}.
PREFIXES = ("/v1/files", "/v1/fine_tuning", "/v1/models", "/v1/chat")
TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         409: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
         500: "server_error", 502: "server_error", 503: "server_error"}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_request") -> OpenAIError:
    return OpenAIError(400, message, param, code)


def not_found(what: str, given: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(404, f"No such {what}: {given!r}", param, f"{what.replace(' ', '_')}_not_found")


def conflict(message: str) -> OpenAIError:
    return OpenAIError(409, message, None, "conflict")


def install(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers={"x-should-retry": "false"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        if not request.url.path.startswith(PREFIXES):
            return await request_validation_exception_handler(request, exc)
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        message = f"{'.'.join(loc) or 'request'}: {first.get('msg', 'invalid')}"
        return JSONResponse(error_body(400, message, ".".join(loc) or None, "invalid_request"), status_code=400,
                            headers={"x-should-retry": "false"})
