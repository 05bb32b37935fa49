"""Speech-to-text and text-to-speech models and their voices in the admin: forms with each task's own
help, and the model cache of every server process (voices: registry/admin/voices.py).

The cache columns and actions cover every live server process (registry/fleet.py): this one's
cache is read and acted on at once, the others' as they last reported and through commands they take
within a second or so (the Model cache page shows their answers). The actions need the change
permission; enabling and disabling is logged in each model's history.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from registry import catalog, fleet
from registry.admin.fields import StringListField
from registry.admin.voices import VoiceInline
from registry.errors import OpenAIError
from registry.models import (
    CacheCommand,
    SpeechModel,
    SpeechToTextModel,
    TextToSpeechModel,
)
from registry.speech.cache import model_cache

CACHE_FIELDS = ["cache_state", "cache_device", "cache_loaded_at", "cache_uses", "cache_error"]
_SPEC_FIELDS = {"model_id", "engine", "source", "device", "compute_type"}  # what the cache keys engines by


# --- forms: each task's own help ------------------------------------------------------------------

_PYPI_HELP = "pypi:PACKAGE names a model shipped in an installed Python package (pypi:A+B: split across two)."


_MODEL_FIELDS = [
    "model_id",
    "engine",
    "source",
    "device",
    "compute_type",
    "enabled",
    "is_default",
    "idle_ttl",
    "aliases",
]


class SpeechToTextModelForm(forms.ModelForm):
    aliases = StringListField(
        help_text="Other names clients may send as model, one per line, e.g. whisper-1."
    )

    class Meta:
        model = SpeechToTextModel
        fields = _MODEL_FIELDS
        help_texts = {
            "engine": "faster-whisper: Whisper on CTranslate2.",
            "source": "A hub repo id (e.g. Systran/faster-whisper-small, downloaded into the models "
            "directory) or a local CTranslate2 model directory. " + _PYPI_HELP,
            "device": "auto: CUDA when CTranslate2 finds a GPU, else the CPU.",
            "compute_type": "auto: float16 on CUDA, int8 on CPU; or a CTranslate2 type such as int8, "
            "int8_float16, float16, float32.",
        }


class TextToSpeechModelForm(forms.ModelForm):
    aliases = StringListField(help_text="Other names clients may send as model, one per line, e.g. tts-1.")

    class Meta:
        model = TextToSpeechModel
        fields = [f for f in _MODEL_FIELDS if f != "compute_type"]  # Whisper's: Kokoro and Piper ignore it
        help_texts = {
            "engine": "kokoro: Kokoro on torch, many voices per model. piper: one Piper voice per model, "
            "on onnxruntime.",
            "source": "Kokoro: a hub repo id (e.g. hexgrad/Kokoro-82M) or a directory holding config.json, "
            "the .pth weights and voices/NAME.pt. Piper: the .onnx file beside its .onnx.json, a Piper "
            "voice name (en_US-joe-medium) or owner/repo/path/voice.onnx on the hub. " + _PYPI_HELP,
            "device": "auto: CUDA when present (Kokoro through torch; Piper only with onnxruntime-gpu).",
        }


# --- the model cache, across processes --------------------------------------------------------------


def _across(obj: SpeechModel) -> fleet.Across:
    return fleet.read().across(obj.model_id)


def _send_to_others(request: HttpRequest, action: str, model_ids: list[str]) -> None:
    """Send `action` for each model to every other live server process, and say so."""
    others = fleet.read(fresh=True).others
    if not others or not model_ids:
        return
    for model_id in model_ids:
        fleet.send(
            action=action,
            model_id=model_id,
            targets=[p.id for p in others],
            requested_by=request.user.get_username(),
        )
    messages.info(
        request,
        format_html(
            "Sent to {} other server process(es) too; their answers are on the "
            '<a href="{}">Model cache</a> page.',
            len(others),
            reverse("admin:model-cache"),
        ),
    )


class SpeechModelAdmin(admin.ModelAdmin):
    """Shared by both speech model admins: columns, actions and a fieldset for the model cache of every
    live server process."""

    list_display = ["model_id", "engine", "source_cut", "enabled", "is_default", "alias_list", "cache"]
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
        description = format_html(
            'In every live server process; the <a href="{}">Model cache</a> page shows each one.',
            reverse("admin:model-cache"),
        )
        cache = {"fields": CACHE_FIELDS, "description": description}
        return [(None, {"fields": fields}), ("Model cache", cache)]

    def save_model(self, request: HttpRequest, obj: SpeechModel, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and _SPEC_FIELDS & set(form.changed_data):
            # The cache keys engines by their spec: the old engine would otherwise sit in memory
            # until its idle TTL, here and in every other process.
            ids = list(dict.fromkeys([form.initial.get("model_id", obj.model_id), obj.model_id]))
            for model_id in ids:
                model_cache.unload(model_id)
            _send_to_others(request, CacheCommand.UNLOAD, ids)

    @admin.display(description="aliases")
    def alias_list(self, obj: SpeechModel) -> str:
        return ", ".join(obj.aliases)

    # The list's columns are kept short (the whole source in its tooltip) to fit beside the filters.
    @admin.display(description="source", ordering="source")
    def source_cut(self, obj: SpeechModel) -> SafeString:
        return format_html('<span class="vp-cut" title="{}">{}</span>', obj.source, obj.source)

    @admin.display(description="cache")
    def cache(self, obj: SpeechModel) -> SafeString:
        """The list's one cache column (the change page has each figure): e.g. "loaded in 2 of 2
        processes on cpu, 5 uses", and a failure's reason, cut (whole in its tooltip)."""
        across = _across(obj)
        text = across.state + (f" on {across.devices}" if across.devices else "")
        if across.where("loaded"):
            text += f", {self.cache_uses(obj)} uses"
        return format_html(
            "{}{}",
            text,
            format_html_join(
                "",
                '<br><span class="vp-error" title="{}">{}</span>',
                ((error, Truncator(error).chars(80)) for _, error in across.errors),
            ),
        )

    @admin.display(description="cache")
    def cache_state(self, obj: SpeechModel) -> str:
        return _across(obj).state

    @admin.display(description="loaded on")
    def cache_device(self, obj: SpeechModel) -> str:
        return _across(obj).devices

    @admin.display(description="loaded since")
    def cache_loaded_at(self, obj: SpeechModel) -> str:
        loaded_at = _across(obj).loaded_at
        if loaded_at is None:
            return ""
        local = timezone.localtime(loaded_at)
        same_day = local.date() == timezone.localdate()
        return formats.time_format(local, "H:i:s") if same_day else formats.date_format(local, "M j, H:i")

    @admin.display(description="uses")
    def cache_uses(self, obj: SpeechModel) -> str:
        across = _across(obj)
        if not across.where("loaded"):
            return ""
        return f"{across.uses} ({across.in_use} now)" if across.in_use else str(across.uses)

    @admin.display(description="last error")
    def cache_error(self, obj: SpeechModel) -> SafeString | str:
        across = _across(obj)
        several = len(across.seen) > 1
        return format_html_join(
            " ",
            '<span title="{}">{}{}</span>',
            (
                (error, f"{process.name}: " if several else "", Truncator(error).chars(160))
                for process, error in across.errors
            ),
        )

    @admin.action(description="Enable selected models", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected models", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._set_enabled(request, queryset, False)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[Any], enabled: bool) -> None:
        rows = list(queryset.exclude(enabled=enabled))
        self.model.objects.filter(pk__in=[r.pk for r in rows]).update(enabled=enabled)
        for row in rows:
            self.log_change(request, row, [{"changed": {"fields": ["Enabled"]}}])
        self.message_user(request, f"{'Enabled' if enabled else 'Disabled'} {len(rows)} model(s).")

    @admin.action(description="Load now (in every server process)", permissions=["change"])
    def load_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        # This process loads here and now: the admin's sync view runs on a thread of its own under
        # ASGI, so only this page waits (for a download, for a hub id not yet fetched).
        sent = []
        for row in queryset:
            if not row.enabled:
                self.message_user(request, f"{row.model_id} is disabled; enable it first.", messages.WARNING)
                continue
            sent.append(row.model_id)
            status = model_cache.status(row.model_id)
            if status.state == "loaded":
                self.message_user(request, f"{row.model_id} is already loaded on {status.device}.")
                continue
            try:
                model_cache.load(catalog.resolved(row))
            except OpenAIError as exc:  # it failed to load, is too large, or no room now (ModelMemoryBusy)
                self.message_user(request, exc.message, messages.ERROR)
                continue
            status = model_cache.status(row.model_id)
            self.message_user(
                request,
                f"Loaded {row.model_id} on {status.device} in {status.load_seconds:.2f} s.",
                messages.SUCCESS,
            )
        _send_to_others(request, CacheCommand.LOAD, sent)

    @admin.action(description="Unload (from every server process)", permissions=["change"])
    def unload(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        selected = [row.model_id for row in queryset]
        ids = [model_id for model_id in selected if model_cache.unload(model_id)]
        if ids:
            self.message_user(request, f"Unloaded {', '.join(ids)}.", messages.SUCCESS)
        else:
            self.message_user(request, "None of the selected models was loaded here.", messages.INFO)
        _send_to_others(request, CacheCommand.UNLOAD, selected)


@admin.register(SpeechToTextModel)
class SpeechToTextModelAdmin(SpeechModelAdmin):
    form = SpeechToTextModelForm


@admin.register(TextToSpeechModel)
class TextToSpeechModelAdmin(SpeechModelAdmin):
    form = TextToSpeechModelForm
    inlines = [VoiceInline]
