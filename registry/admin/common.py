"""What the admin modules share."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest


def looks_up(lookup: str, field: str) -> bool:
    return lookup.split(LOOKUP_SEP, 1)[0] == field


def object_page(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, original: Any, title: str, **extra: Any
) -> dict[str, Any]:
    """The context of a page about one object beside its change form (a key's revoke and secret
    pages, an upstream's connection test), for admin/registry/object_page_breadcrumbs.html."""
    return {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "original": original,
        "title": title,
        **extra,
    }
