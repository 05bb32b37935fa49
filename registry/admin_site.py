"""voiceproxy's admin site: Django's, with the operator's own pages beside the model admins.

Modules add a page with `extra_page(...)` (the dashboard, the model cache of every process); each
is wrapped by `admin_view` (staff only, CSRF, no caching) and linked from the index's sidebar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path


@dataclass(frozen=True)
class ExtraPage:
    route: str  # below /admin/, e.g. "dashboard/"
    view: Callable[..., HttpResponse]
    name: str  # URL name, reversed as "admin:<name>"
    title: str  # the index link's text; "" for a page the index does not list


_pages: list[ExtraPage] = []


def extra_page(route: str, view: Callable[..., HttpResponse], *, name: str, title: str = "") -> None:
    _pages.append(ExtraPage(route, view, name, title))


class VoiceproxyAdminSite(admin.AdminSite):
    site_header = "voiceproxy"
    site_title = "voiceproxy admin"
    index_title = "Gateway configuration"

    def get_urls(self) -> list[Any]:
        ours: list[URLPattern] = [path(p.route, self.admin_view(p.view), name=p.name) for p in _pages]
        return ours + super().get_urls()

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        context["voiceproxy_pages"] = [p for p in _pages if p.title]
        return context
