"""Django's site middleware (sessions, CSRF, auth, messages...) for the admin, never for /v1/.

Under ASGI each of Django's own middleware is a sync `process_request`/`process_response` pair that
Django runs through `sync_to_async`: two thread hops apiece, ~2-3 ms per request for the seven of
them, spent on sessions, cookies and frame options that an API-key-authenticated JSON/audio API
never uses. `SiteOnly` wraps one of them: /v1/ requests pass straight through on the event loop,
every other path (the admin, its static files, /health) gets the wrapped middleware unchanged,
`process_view` included (CsrfViewMiddleware checks admin forms there).

`admin_lockout_response` is the page django-axes' own middleware (async-native, so not wrapped
here) answers a locked-out admin login with: 429 and `Retry-After`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from asgiref.sync import markcoroutinefunction, sync_to_async
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_cool_off
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Max
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils import timezone
from django.utils.html import format_html

from registry.api import is_api

# Hooks Django collects from the middleware it instantiates; a wrapper would hide them.
_UNSUPPORTED_HOOKS = ("process_exception", "process_template_response")

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class SiteOnly:
    """Runs `wrapped` for every path but /v1/. Subclasses name the middleware class."""

    wrapped: ClassVar[type]
    async_capable = True
    sync_capable = False

    def __init__(self, get_response: GetResponse) -> None:
        unsupported = [hook for hook in _UNSUPPORTED_HOOKS if hasattr(self.wrapped, hook)]
        if unsupported:
            raise ImproperlyConfigured(f"SiteOnly cannot wrap {self.wrapped.__name__}: it has {unsupported}.")
        self.get_response = get_response
        self.inner = self.wrapped(get_response)
        markcoroutinefunction(self)
        if hasattr(self.inner, "process_view"):
            # Django collects process_view from the middleware it instantiated (this wrapper);
            # an async one is called as is, without a thread hop for /v1/.
            self.process_view = self._process_view

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if is_api(request.path):
            return await self.get_response(request)
        return await self.inner(request)

    async def _process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> HttpResponseBase | None:
        if is_api(request.path):
            return None
        return await sync_to_async(self.inner.process_view, thread_sensitive=True)(
            request, view, args, kwargs
        )


class SiteSecurityMiddleware(SiteOnly):
    wrapped = SecurityMiddleware


class SiteSessionMiddleware(SiteOnly):
    wrapped = SessionMiddleware


class SiteCommonMiddleware(SiteOnly):
    wrapped = CommonMiddleware


class SiteCsrfViewMiddleware(SiteOnly):
    wrapped = CsrfViewMiddleware


class SiteAuthenticationMiddleware(SiteOnly):
    wrapped = AuthenticationMiddleware


class SiteMessageMiddleware(SiteOnly):
    wrapped = MessageMiddleware


class SiteXFrameOptionsMiddleware(SiteOnly):
    wrapped = XFrameOptionsMiddleware


def admin_lockout_response(request: HttpRequest, *_: object) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: a plain page, 429, `Retry-After` until the lockout ends.

    Axes calls it as (request, response, credentials), or from its async middleware as
    (request, credentials); neither is needed. Runs in a thread (the middleware's sync_to_async).
    """
    credentials = getattr(request, "axes_credentials", None)
    cool_off = get_cool_off(request)
    latest = None
    # The failures that lock this client out (settings.AXES_LOCKOUT_PARAMETERS) within the cool-off;
    # when the newest of them expires, so has the lockout.
    for attempts in AxesDatabaseHandler().get_user_attempts(request, credentials):
        newest = attempts.aggregate(newest=Max("attempt_time"))["newest"]
        if newest is not None and (latest is None or newest > latest):
            latest = newest
    remaining = (latest + cool_off - timezone.now()).total_seconds() if latest and cool_off else 0
    seconds = max(1, math.ceil(remaining))
    body = format_html(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Too many failed logins</title>'
        "</head>\n<body>\n<h1>Too many failed logins</h1>\n"
        "<p>Logins from your address ({}) are locked after {} failed attempts.</p>\n"
        "<p>Try again in {} minute(s). An administrator can lift the lockout now with "
        "<code>python manage.py axes_reset_ip {}</code>.</p>\n</body></html>\n",
        getattr(request, "axes_ip_address", ""),
        settings.AXES_FAILURE_LIMIT,
        math.ceil(seconds / 60),
        getattr(request, "axes_ip_address", ""),
    )
    response = HttpResponse(body, status=settings.AXES_HTTP_RESPONSE_CODE)
    response["Retry-After"] = str(seconds)
    return response
