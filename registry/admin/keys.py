"""Client API keys in the admin."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from registry.admin.common import looks_up
from registry.models import (
    ApiKey,
)


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["name", "expires_at", "allowed_models", "rate_limit_per_minute"]


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked"), ("expired", "expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = [
        "name",
        "prefix",
        "status",
        "created",
        "last_used",
        "expires_at",
        "rate_limit_per_minute",
        "scope",
    ]
    list_filter = [KeyStatusFilter, "created", "last_used"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created", "last_used", "revoked_at"]
    actions = ["revoke", "unrevoke"]

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # As for upstream keys: no URL filter on the stored hash.
        return not looks_up(lookup, "secret_hash") and super().lookup_allowed(lookup, value, request)

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        return "revoked" if obj.is_revoked else "expired" if obj.is_expired else "active"

    @admin.display(description="models")
    def scope(self, obj: ApiKey) -> str:
        return ", ".join(obj.allowed_models) or "(all)"

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        fields = {f: form.cleaned_data[f] for f in ApiKeyForm.Meta.fields}
        key, secret = ApiKey.issue(**fields)
        obj.pk = key.pk  # so the admin's redirect and log entry point at the new key
        obj.prefix = key.prefix
        obj.secret_hash = key.secret_hash
        messages.warning(
            request,
            format_html(
                "New API key for {}: <code style='user-select:all'>{}</code> — copy it now, "
                "it is stored only as a hash and cannot be shown again.",
                key.name,
                secret,
            ),
        )

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).")

    @admin.action(description="Restore selected revoked keys")
    def unrevoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.update(revoked_at=None)
        self.message_user(request, f"Restored {count} key(s).")
