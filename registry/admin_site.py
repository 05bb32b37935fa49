"""voiceproxy's admin site: Django's, with the operator's own pages beside the model admins.

Modules add a page with `extra_page(...)` (the dashboard, the model cache of every process); each
is wrapped by `admin_view` (staff only, CSRF, no caching), then checked against the page's own
permission (a staff user without it gets 403, as for a model admin's page), and linked in every
admin page's header for the users who may open it.

Every admin view (the model admins' too) answers 400 to a query string with a NUL character:
PostgreSQL cannot compare text with one (a filter or a search would be a 500), and no value needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import update_wrapper
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import URLPattern, path


@dataclass(frozen=True)
class ExtraPage:
    route: str  # below /admin/, e.g. "dashboard/"
    view: Callable[..., HttpResponse]
    name: str  # URL name, reversed as "admin:<name>"
    title: str  # the header link's text; "" for a page no header lists
    # Who may open it: a staff user with any one of these permissions ("registry.view_requestlog");
    # empty: every staff user.
    permissions: tuple[str, ...] = ()

    def allows(self, user: Any) -> bool:
        return not self.permissions or any(user.has_perm(p) for p in self.permissions)


_pages: list[ExtraPage] = []


def extra_page(
    route: str,
    view: Callable[..., HttpResponse],
    *,
    name: str,
    title: str = "",
    permissions: tuple[str, ...] = (),
) -> None:
    """Add a staff page below /admin/; `permissions`: the user needs at least one of them."""
    _pages.append(ExtraPage(route, view, name, title, permissions))


def _guarded(page: ExtraPage) -> Callable[..., HttpResponse]:
    def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not page.allows(request.user):
            raise PermissionDenied  # 403, as the admin answers a page of a model one may not view
        return page.view(request, *args, **kwargs)

    return view


class VoiceproxyAdminSite(admin.AdminSite):
    site_header = "voiceproxy"
    site_title = "voiceproxy admin"
    index_title = "Gateway configuration"

    def get_urls(self) -> list[Any]:
        ours: list[URLPattern] = [path(p.route, self.admin_view(_guarded(p)), name=p.name) for p in _pages]
        return ours + super().get_urls()

    def admin_view(self, view: Callable[..., Any], cacheable: bool = False) -> Callable[..., Any]:
        inner = super().admin_view(view, cacheable)

        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if any(
                "\x00" in name or any("\x00" in v for v in values) for name, values in request.GET.lists()
            ):
                return HttpResponseBadRequest(
                    "A NUL character in the query string.", content_type="text/plain; charset=utf-8"
                )
            return inner(request, *args, **kwargs)

        return update_wrapper(checked, inner)

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        context["voiceproxy_pages"] = [p for p in _pages if p.title and p.allows(request.user)]
        return context
