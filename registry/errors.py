"""The one error shape under /v1/, and the one place that renders it.

    OpenAIError                      status, type, code, param, message, headers
    ├── InvalidRequest          400  invalid_request_error
    │   ├── InvalidAudio        400  code "invalid_audio" (empty, corrupt, not audio, too long)
    │   └── UnsupportedValue    400  code "unsupported_value"
    ├── PayloadTooLarge         413  code "payload_too_large"
    ├── UnsupportedMediaType    415  code "unsupported_media_type"
    ├── AuthenticationFailed    401  authentication_error, code "invalid_api_key"
    ├── PermissionDenied        403  permission_error, code "model_not_allowed"
    ├── NotFound                404  code "not_found"
    │   └── ModelNotFound       404  code "model_not_found"
    ├── MethodNotAllowed        405  code "method_not_allowed"
    ├── RateLimited             429  rate_limit_error, Retry-After
    │   └── TooManySessions     429  code "too_many_sessions" (a key's Realtime sessions)
    ├── InternalError           500  server_error
    ├── UpstreamError           502  upstream_error (or the upstream's own status and body for a 4xx)
    ├── ServerBusy              503  server_error, code "server_busy", Retry-After
    │   ├── DatabaseUnavailable 503  code "database_unavailable" (no answer in time)
    │   ├── SessionsFull        503  code "too_many_sessions" (the process's Realtime sessions)
    │   ├── ShuttingDown        503  code "shutting_down" (SIGTERM received)
    │   └── ModelMemoryBusy     503  code "model_memory_busy" (its device's memory budget is held by
    │                                models in use)
    ├── ModelUnavailable        503  server_error, code "model_unavailable" (failed to load), or
    │                                "model_too_large" (larger than its device's memory budget)
    └── UpstreamTimeout         504  upstream_error, code "upstream_timeout"

Plain Python, no HTTP: services raise these wherever they run (an HTTP request, a WebSocket session,
a management command, the bench). `error_body()` builds `{"error": {message, type, param, code}}`;
`as_openai_error()` maps any exception onto the tree. The HTTP edge renders them in one place
(registry/api/errors.py: DRF's EXCEPTION_HANDLER, the /v1/ 404/500 handlers, the middleware, the SSE
`error` event).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


class OpenAIError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | int | None = None  # ours are strings; an upstream's own may be a number

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        status: int | None = None,
        type: str | None = None,  # noqa: A002 - OpenAI's own field name
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers: dict[str, str] = dict(headers or {})
        # More fields of the error object, as an upstream sent them (llama.cpp's n_ctx...).
        self.extra: dict[str, Any] = dict(extra or {})

    def body(self) -> dict[str, Any]:
        body = error_body(self.message, type=self.type, param=self.param, code=self.code)
        body["error"].update({k: v for k, v in self.extra.items() if k not in body["error"]})
        return body


class InvalidRequest(OpenAIError):
    status = 400
    type = "invalid_request_error"


class InvalidAudio(InvalidRequest):
    code = "invalid_audio"


class UnsupportedValue(InvalidRequest):
    code = "unsupported_value"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    code = "unsupported_media_type"


class AuthenticationFailed(OpenAIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(OpenAIError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class RateLimited(OpenAIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class TooManySessions(RateLimited):
    code = "too_many_sessions"


class InternalError(OpenAIError):
    status = 500
    type = "server_error"
    code = "internal_error"


class UpstreamError(OpenAIError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class ServerBusy(OpenAIError):
    status = 503
    type = "server_error"
    code = "server_busy"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class DatabaseUnavailable(ServerBusy):
    code = "database_unavailable"


class SessionsFull(ServerBusy):
    code = "too_many_sessions"


class ShuttingDown(ServerBusy):
    code = "shutting_down"


class ModelMemoryBusy(ServerBusy):
    code = "model_memory_busy"


class ModelUnavailable(OpenAIError):
    status = 503
    type = "server_error"
    code = "model_unavailable"


class UpstreamTimeout(OpenAIError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


def error_body(
    message: str,
    *,
    type: str,
    param: str | None = None,
    code: str | int | None = None,  # noqa: A002
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def as_openai_error(exc: BaseException) -> OpenAIError:
    """Our own errors as they are; anything else is an InternalError, logged here with its traceback.

    The HTTP edge first maps DRF's and Django's exceptions (registry/api/errors.py).
    """
    if isinstance(exc, OpenAIError):
        return exc
    logger.error("unhandled error", exc_info=exc)
    return InternalError("The server had an error while processing your request.")
