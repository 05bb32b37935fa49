"""The admin: where operators configure upstreams, keys, models and voices, and read the audit log."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from registry.models import (
    ApiKey,
    RequestLog,
    SpeechToTextModel,
    TextToSpeechModel,
    Upstream,
    Voice,
)

admin.site.site_header = "voiceproxy"
admin.site.site_title = "voiceproxy admin"
admin.site.index_title = "Gateway configuration"


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
        fields = ["name", "base_url", "api_key", "clear_api_key", "timeout", "enabled", "is_default", "chat_models"]

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
    actions = ["enable", "disable"]

    @admin.display(description="chat models")
    def routed_models(self, obj: Upstream) -> str:
        return ", ".join(obj.chat_models) or ("(any)" if obj.is_default else "—")

    @admin.display(description="API key", boolean=True)
    def key_set(self, obj: Upstream) -> bool:
        return obj.has_api_key

    @admin.action(description="Enable selected upstreams")
    def enable(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        queryset.update(enabled=True)

    @admin.action(description="Disable selected upstreams")
    def disable(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        queryset.update(enabled=False)


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
    list_display = ["name", "prefix", "status", "created", "last_used", "expires_at", "rate_limit_per_minute", "scope"]
    list_filter = [KeyStatusFilter, "created", "last_used"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created", "last_used", "revoked_at"]
    actions = ["revoke", "unrevoke"]

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


class SpeechModelAdmin(admin.ModelAdmin):
    list_display = ["model_id", "engine", "source", "device", "enabled", "is_default", "alias_list"]
    list_filter = ["engine", "enabled", "is_default", "device"]
    search_fields = ["model_id", "source"]
    actions = ["enable", "disable"]

    @admin.display(description="aliases")
    def alias_list(self, obj: SpeechToTextModel | TextToSpeechModel) -> str:
        return ", ".join(obj.aliases)

    @admin.action(description="Enable selected models")
    def enable(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        queryset.update(enabled=True)

    @admin.action(description="Disable selected models")
    def disable(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        queryset.update(enabled=False)


@admin.register(SpeechToTextModel)
class SpeechToTextModelAdmin(SpeechModelAdmin):
    pass


class VoiceInline(admin.TabularInline):
    model = Voice
    extra = 0
    fields = ["name", "source", "language", "aliases", "enabled"]


@admin.register(TextToSpeechModel)
class TextToSpeechModelAdmin(SpeechModelAdmin):
    inlines = [VoiceInline]


@admin.register(Voice)
class VoiceAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "language", "alias_list", "source", "enabled"]
    list_filter = ["model", "language", "enabled"]
    search_fields = ["name", "model__model_id"]

    @admin.display(description="aliases")
    def alias_list(self, obj: Voice) -> str:
        return ", ".join(obj.aliases)


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    """An audit log: readable, never added to or edited."""

    date_hierarchy = "created"
    list_display = [
        "created", "request_id", "key_prefix", "method", "endpoint", "model_names",
        "status_code", "error_code", "duration_ms", "stt_ms", "llm_ms", "tts_ms",
    ]
    list_filter = ["status_code", "endpoint", "api_key", "model_names", "streamed", "upstream"]
    search_fields = ["request_id", "key_prefix", "endpoint", "model_names", "error_message", "upstream"]
    list_select_related = ["api_key"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: RequestLog | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: RequestLog | None = None) -> bool:
        return False
