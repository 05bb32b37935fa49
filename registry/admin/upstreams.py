"""Upstreams in the admin: the LLM APIs chat completions are forwarded to."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from registry.admin.common import looks_up
from registry.models import (
    Upstream,
)


class UpstreamForm(forms.ModelForm):
    # Write-only: the stored key is never put back into the page, not even masked.
    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Leave empty to keep the current key. It is encrypted and never shown again.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")

    class Meta:
        model = Upstream
        fields = [
            "name",
            "base_url",
            "api_key",
            "clear_api_key",
            "timeout",
            "enabled",
            "is_default",
            "chat_models",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("clear_api_key") and cleaned.get("api_key"):
            raise forms.ValidationError("Either set a new API key or clear it, not both.")
        return cleaned

    def save(self, commit: bool = True) -> Upstream:
        upstream: Upstream = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            upstream.set_api_key("")
        elif self.cleaned_data.get("api_key"):
            upstream.set_api_key(self.cleaned_data["api_key"])
        if commit:
            upstream.save()
        return upstream


@admin.register(Upstream)
class UpstreamAdmin(admin.ModelAdmin):
    form = UpstreamForm
    list_display = ["name", "base_url", "enabled", "is_default", "routed_models", "key_set", "timeout"]
    list_filter = ["enabled", "is_default"]
    search_fields = ["name", "base_url"]
    readonly_fields = ["key_set"]  # whether a key is stored: all the page ever says of it
    actions = ["enable", "disable"]

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        # The admin lets any local field be filtered from the URL (?api_key_encrypted__startswith=…):
        # an oracle that would spell out the stored token one character at a time.
        return not looks_up(lookup, "api_key_encrypted") and super().lookup_allowed(lookup, value, request)

    @admin.display(description="chat models")
    def routed_models(self, obj: Upstream) -> str:
        return ", ".join(obj.chat_models) or ("(any)" if obj.is_default else "—")

    @admin.display(description="key stored", boolean=True)
    def key_set(self, obj: Upstream) -> bool:
        return obj.has_api_key

    @admin.action(description="Enable selected upstreams")
    def enable(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        queryset.update(enabled=True)

    @admin.action(description="Disable selected upstreams")
    def disable(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        queryset.update(enabled=False)
