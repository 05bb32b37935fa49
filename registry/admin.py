"""The admin: where operators configure upstreams, keys, models and voices, and read the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from registry import catalog
from registry.errors import ModelUnavailable
from registry.models import (
    ApiKey,
    RequestLog,
    SpeechModel,
    SpeechToTextModel,
    TextToSpeechModel,
    Upstream,
    Voice,
)
from registry.speech.cache import Status, model_cache

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


def _looks_up(lookup: str, field: str) -> bool:
    return lookup.split(LOOKUP_SEP, 1)[0] == field


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
        return not _looks_up(lookup, "api_key_encrypted") and super().lookup_allowed(lookup, value, request)

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
        return not _looks_up(lookup, "secret_hash") and super().lookup_allowed(lookup, value, request)

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


CACHE_FIELDS = ["cache_state", "cache_device", "cache_loaded_at", "cache_uses", "cache_error"]
_SPEC_FIELDS = {"model_id", "engine", "source", "device", "compute_type"}  # what the cache keys engines by


def _status(obj: SpeechModel) -> Status:
    return model_cache.status(obj.model_id)


class SpeechModelAdmin(admin.ModelAdmin):
    """Shared by both speech model admins, with this process's model cache: columns, actions, a fieldset.

    The cache is per process: with several server processes, each page shows (and each action acts
    on) the process that served it.
    """

    list_display = [
        "model_id",
        "engine",
        "source",
        "device",
        "enabled",
        "is_default",
        "alias_list",
        *CACHE_FIELDS,
    ]
    list_filter = ["engine", "enabled", "is_default", "device"]
    search_fields = ["model_id", "source"]
    actions = ["enable", "disable", "load_now", "unload"]

    def get_readonly_fields(self, request: HttpRequest, obj: SpeechModel | None = None) -> list[str]:
        return [*super().get_readonly_fields(request, obj), *(CACHE_FIELDS if obj is not None else [])]

    def get_fieldsets(
        self, request: HttpRequest, obj: SpeechModel | None = None
    ) -> list[tuple[str | None, dict[str, Any]]]:
        if obj is None:  # nothing cached yet for a model being added
            return super().get_fieldsets(request, obj)
        fields = [f for f in self.get_fields(request, obj) if f not in CACHE_FIELDS]
        return [
            (None, {"fields": fields}),
            (
                "Model cache",
                {"fields": CACHE_FIELDS, "description": "In the server process that served this page."},
            ),
        ]

    def save_model(self, request: HttpRequest, obj: SpeechModel, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and _SPEC_FIELDS & set(form.changed_data):
            # The cache keys engines by their spec: the old engine would otherwise sit in memory
            # until its idle TTL. Other processes drop theirs that way.
            model_cache.unload(form.initial.get("model_id", obj.model_id))
            model_cache.unload(obj.model_id)

    @admin.display(description="aliases")
    def alias_list(self, obj: SpeechModel) -> str:
        return ", ".join(obj.aliases)

    @admin.display(description="cache")
    def cache_state(self, obj: SpeechModel) -> str:
        return _status(obj).state

    @admin.display(description="loaded on")
    def cache_device(self, obj: SpeechModel) -> str:
        return _status(obj).device

    @admin.display(description="loaded since")
    def cache_loaded_at(self, obj: SpeechModel) -> datetime | None:
        return _status(obj).loaded_at

    @admin.display(description="uses")
    def cache_uses(self, obj: SpeechModel) -> str:
        status = _status(obj)
        if status.state != "loaded":
            return ""
        return f"{status.uses} ({status.in_use} now)" if status.in_use else str(status.uses)

    @admin.display(description="last error")
    def cache_error(self, obj: SpeechModel) -> SafeString | str:
        status = _status(obj)
        if status.state != "failed":
            return ""
        return format_html('<span title="{}">{}</span>', status.error, Truncator(status.error).chars(160))

    @admin.action(description="Enable selected models")
    def enable(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        queryset.update(enabled=True)

    @admin.action(description="Disable selected models")
    def disable(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        queryset.update(enabled=False)

    @admin.action(description="Load now (in this server process)")
    def load_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        # Blocks this request for the load (a download, for a hub id not yet fetched): under ASGI
        # the admin's sync view runs in its own thread, so only this page waits.
        for row in queryset:
            if not row.enabled:
                self.message_user(request, f"{row.model_id} is disabled; enable it first.", messages.WARNING)
                continue
            status = model_cache.status(row.model_id)
            if status.state == "loaded":
                self.message_user(request, f"{row.model_id} is already loaded on {status.device}.")
                continue
            try:
                model_cache.load(catalog.resolved(row))
            except ModelUnavailable as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            status = model_cache.status(row.model_id)
            self.message_user(
                request,
                f"Loaded {row.model_id} on {status.device} in {status.load_seconds:.2f} s.",
                messages.SUCCESS,
            )

    @admin.action(description="Unload (from this server process)")
    def unload(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        ids = [row.model_id for row in queryset if model_cache.unload(row.model_id)]
        if ids:
            self.message_user(request, f"Unloaded {', '.join(ids)}.", messages.SUCCESS)
        else:
            self.message_user(request, "None of the selected models was loaded.", messages.INFO)


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
        "created",
        "request_id",
        "key_prefix",
        "method",
        "endpoint",
        "model_names",
        "status_code",
        "error_code",
        "duration_ms",
        "stt_ms",
        "llm_ms",
        "tts_ms",
    ]
    list_filter = ["status_code", "endpoint", "api_key", "model_names", "streamed", "upstream"]
    search_fields = [
        "request_id",
        "client_request_id",
        "key_prefix",
        "endpoint",
        "model_names",
        "error_message",
        "upstream",
    ]
    list_select_related = ["api_key"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: RequestLog | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: RequestLog | None = None) -> bool:
        return False
