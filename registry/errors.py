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
    ├── InternalError           500  server_error
    ├── UpstreamError           502  upstream_error (or the upstream's own status and body for a 4xx)
    ├── ServerBusy              503  server_error, code "server_busy", Retry-After
    │   └── DatabaseUnavailable 503  code "database_unavailable" (no answer in time)
    ├── ModelUnavailable        503  server_error, code "model_unavailable" (failed to load)
    └── UpstreamTimeout         504  upstream_error, code "upstream_timeout"

`error_body()` builds `{"error": {message, type, param, code}}`; `error_response()` renders any
exception (ours, DRF's or Django's) as that body with the right status. DRF's EXCEPTION_HANDLER,
the /v1/ 404/500 handlers, the audit middleware and the SSE `error` event all go through it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.exceptions import DisallowedHost, RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf

logger = logging.getLogger(__name__)


class OpenAIError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,  # noqa: A002 - OpenAI's own field name
        headers: dict[str, str] | None = None,
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

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


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
    code: str | None = None,  # noqa: A002
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _first_validation_error(detail: Any, path: str = "") -> tuple[str | None, str]:
    """The first (param, message) of a DRF ValidationError's nested detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = path if key == "non_field_errors" else (f"{path}.{key}" if path else str(key))
            return _first_validation_error(value, name)
    if isinstance(detail, list) and detail:
        first = detail[0]
        if isinstance(first, (dict, list)):
            index = next((i for i, item in enumerate(detail) if item), 0)
            return _first_validation_error(detail[index], f"{path}[{index}]" if path else "")
        return (path or None), str(first)
    return (path or None), str(detail)


def as_openai_error(exc: BaseException) -> OpenAIError:
    """Map any exception raised while serving /v1/ onto our tree."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, drf.ValidationError):
        param, message = _first_validation_error(exc.detail)
        text = f"Invalid value for '{param}': {message}" if param else message
        return InvalidRequest(text, param=param, code="invalid_value")
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return AuthenticationFailed(str(exc.detail))
    if isinstance(exc, drf.PermissionDenied):
        return PermissionDenied(str(exc.detail), code="permission_denied")
    if isinstance(exc, drf.MethodNotAllowed):
        return MethodNotAllowed(str(exc.detail))
    if isinstance(exc, drf.UnsupportedMediaType):
        return UnsupportedMediaType(str(exc.detail))
    if isinstance(exc, drf.ParseError):
        return InvalidRequest(f"We could not parse the request body: {exc.detail}", code="invalid_body")
    if isinstance(exc, drf.NotFound):
        return NotFound(str(exc.detail))
    if isinstance(exc, drf.Throttled):
        return RateLimited(str(exc.detail), retry_after=int(exc.wait or 1))
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("The request body is larger than this server accepts.")
    if isinstance(exc, DisallowedHost):
        return InvalidRequest(
            "The Host header names a host this server does not serve (VOICEPROXY_ALLOWED_HOSTS).",
            code="invalid_host",
        )
    if isinstance(exc, SuspiciousOperation):
        return InvalidRequest("The request was malformed.", code="invalid_request")
    if isinstance(exc, drf.APIException):
        return OpenAIError(str(exc.detail), status=exc.status_code, type="invalid_request_error")
    return InternalError("The server had an error while processing your request.")


def error_response(exc: BaseException) -> JsonResponse:
    """Render any exception as OpenAI's error body, with its status and headers."""
    error = as_openai_error(exc)
    if isinstance(error, InternalError) and error is not exc:
        logger.exception("unhandled error", exc_info=exc)
    response = JsonResponse(error.body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    # The audit middleware reads this back to fill the log row.
    response.openai_error = error  # type: ignore[attr-defined]
    return response


def sse_error_event(exc: BaseException) -> bytes:
    """An error after the stream began: `data: {"error": {...}}`, which the openai SDK raises."""
    error = as_openai_error(exc)
    return f"data: {json.dumps(error.body())}\n\n".encode()


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse:
    return error_response(exc)


@csrf_exempt  # /v1/ is authenticated by API keys, not cookies
def not_found_view(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(NotFound(f"Unknown request URL: {request.method} {request.path}."))


def server_error_view(request: HttpRequest) -> HttpResponse:
    return error_response(InternalError("The server had an error while processing your request."))
