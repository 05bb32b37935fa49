"""Django's 404/500 handlers: OpenAI's error shape under /v1/, Django's pages elsewhere."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views import defaults

from registry.errors import not_found_view, server_error_view


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith("/v1/"):
        return not_found_view(request, exception)
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/v1/"):
        return server_error_view(request)
    return defaults.server_error(request)
