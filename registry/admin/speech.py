"""Speech-to-text and text-to-speech models and their voices in the admin, with the model cache."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from registry import catalog
from registry.errors import ModelUnavailable
from registry.models import (
    SpeechModel,
    SpeechToTextModel,
    TextToSpeechModel,
    Voice,
)
from registry.speech.cache import Status, model_cache

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
