"""The one place that renders errors over HTTP: `{"error": {message, type, param, code}}`.

Services raise `registry.errors.OpenAIError` subclasses; DRF and Django raise their own. `classify()`
maps all of them onto our tree and `error_response()` renders the result with its status and
headers. DRF's EXCEPTION_HANDLER, the /v1/ 404 and 500 handlers, the middleware's own refusals and
the SSE `error` event (registry/api/sse.py) all go through here.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import DisallowedHost, RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf

from registry.api import is_api
from registry.errors import (
    AuthenticationFailed,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    OpenAIError,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    UnsupportedMediaType,
    as_openai_error,
)

# Error codes a serializer may give (`ValidationError(..., code=...)`) that reach the client as they
# are; DRF's own ("invalid", "required", "invalid_choice"...) become "invalid_value".
OUR_VALIDATION_CODES = frozenset({"invalid_audio"})


def _first_validation_error(detail: Any, path: str = "") -> tuple[str | None, Any]:
    """The first (param, ErrorDetail) of a DRF ValidationError's nested detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                name = path
            elif isinstance(key, int):  # a list's errors by index (DRF's ListSerializer)
                name = f"{path}[{key}]"
            else:
                name = f"{path}.{key}" if path else str(key)
            return _first_validation_error(value, name)
    if isinstance(detail, list) and detail:
        first = detail[0]
        if isinstance(first, (dict, list)):
            index = next((i for i, item in enumerate(detail) if item), 0)
            return _first_validation_error(detail[index], f"{path}[{index}]" if path else "")
        return (path or None), first
    return (path or None), detail


def _from_drf(exc: drf.APIException) -> OpenAIError:
    if isinstance(exc, drf.ValidationError):
        param, detail = _first_validation_error(exc.detail)
        text = f"Invalid value for '{param}': {detail}" if param else str(detail)
        code = getattr(detail, "code", None)
        return InvalidRequest(
            text, param=param, code=code if code in OUR_VALIDATION_CODES else "invalid_value"
        )
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
    return OpenAIError(str(exc.detail), status=exc.status_code, type="invalid_request_error")


def classify(exc: BaseException) -> OpenAIError:
    """Map any exception raised while serving /v1/ onto our tree (unknown ones become a logged 500)."""
    if isinstance(exc, drf.APIException):
        return _from_drf(exc)
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge("The request body is larger than this server accepts.")
    if isinstance(exc, DisallowedHost):
        return InvalidRequest(
            "The Host header names a host this server does not serve (VOICEPROXY_ALLOWED_HOSTS).",
            code="invalid_host",
        )
    if isinstance(exc, SuspiciousOperation):
        return InvalidRequest("The request was malformed.", code="invalid_request")
    return as_openai_error(exc)


def error_response(exc: BaseException) -> JsonResponse:
    """Render any exception as OpenAI's error body, with its status and headers."""
    error = classify(exc)
    response = JsonResponse(error.body(), status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    # The audit middleware reads this back to fill the log row.
    response.openai_error = error
    return response


def drf_exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse:
    return error_response(exc)


@csrf_exempt  # /v1/ is authenticated by API keys, not cookies
def not_found_view(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(NotFound(f"Unknown request URL: {request.method} {request.path}."))


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 handler: OpenAI's error shape under /v1/, Django's page elsewhere."""
    if is_api(request.path):
        return not_found_view(request, exception)
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api(request.path):
        return error_response(InternalError("The server had an error while processing your request."))
    return defaults.server_error(request)
