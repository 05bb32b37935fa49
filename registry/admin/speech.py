"""Speech-to-text and text-to-speech models and their voices in the admin: forms with each task's own
help, the model cache of every server process, and a voice's preview.

The cache columns and actions cover every live server process (registry/fleet.py): this one's
cache is read and acted on at once, the others' as they last reported and through commands they take
within a second or so (the Model cache page shows their answers). The actions need the change
permission; enabling and disabling is logged in each model's history.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from registry import audit, catalog, fleet
from registry.admin.fields import StringListField, StringListWidget
from registry.errors import OpenAIError, as_openai_error
from registry.models import (
    CacheCommand,
    SpeechModel,
    SpeechToTextModel,
    TextToSpeechModel,
    Voice,
)
from registry.speech import audio, tts
from registry.speech.cache import model_cache

CACHE_FIELDS = ["cache_state", "cache_device", "cache_loaded_at", "cache_uses", "cache_error"]
_SPEC_FIELDS = {"model_id", "engine", "source", "device", "compute_type"}  # what the cache keys engines by

PREVIEW_TEXT = "Hello! This is a short sample of my voice."
PREVIEW_CHARS = 200  # a preview is a sample, not a way around the API's keys and limits
PREVIEW_ENDPOINT = "admin:voice-preview"  # its audit rows' endpoint and route


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


class VoiceForm(forms.ModelForm):
    aliases = StringListField(
        max_length=100, help_text="OpenAI voice names (or any other) mapped here, one per line, e.g. alloy."
    )

    class Meta:
        model = Voice
        fields = ["model", "name", "source", "language", "aliases", "enabled"]
        help_texts = {
            "source": "Empty: found in the model by name (Kokoro: voices/NAME.pt in its source; Piper: "
            "the model's own voice, or its speaker NAME). Kokoro also takes a .pt file, a path in the "
            "model's hub repo, or 'a,b' to blend voices.",
            "language": "Kokoro: en-us, en-gb, es, fr, hi, it, ja, pt-br, zh; empty: from the name "
            "(bf_emma is British English). Piper ignores it.",
        }


class VoiceInlineForm(VoiceForm):
    """The same form, narrow enough for one row per voice on the model's page."""

    aliases = StringListField(
        max_length=100,
        help_text=VoiceForm.base_fields["aliases"].help_text,
        widget=StringListWidget(attrs={"rows": 1, "cols": 14}),
    )

    class Meta(VoiceForm.Meta):
        widgets = {
            "name": forms.TextInput(attrs={"size": 13}),
            "language": forms.TextInput(attrs={"size": 5}),
            "source": forms.TextInput(attrs={"size": 16}),
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


# --- voices and their preview ----------------------------------------------------------------------


def _preview_url(voice: Voice) -> str:
    return reverse("admin:registry_voice_preview", args=[voice.pk])


class VoiceInline(admin.TabularInline):
    model = Voice
    form = VoiceInlineForm
    extra = 0
    fields = ["name", "language", "aliases", "source", "enabled", "preview"]
    readonly_fields = ["preview"]

    @admin.display(description="preview")
    def preview(self, obj: Voice) -> SafeString | str:
        if obj.pk is None:
            return ""
        return format_html(
            '<audio class="vp-preview" controls preload="none" src="{}" title="{}"></audio>',
            _preview_url(obj),
            PREVIEW_TEXT,
        )


@admin.register(TextToSpeechModel)
class TextToSpeechModelAdmin(SpeechModelAdmin):
    form = TextToSpeechModelForm
    inlines = [VoiceInline]


async def speak_sample(*, model_id: str, voice: str, text: str, request_id: str) -> bytes:
    """`text` spoken by a registered voice as a wav file, through the service /v1/audio/speech uses
    (its pool, its cache), audited as PREVIEW_ENDPOINT under `request_id`.

    Raises what the service raises: ModelNotFound, InvalidRequest, ModelUnavailable, ServerBusy.
    """
    with audit.scope(method="GET", endpoint=PREVIEW_ENDPOINT, request_id=request_id) as record:
        voicing = await tts.voicing(api_key=None, model=model_id, voice=voice)
        audit.usage().characters_in = len(text)
        data = await tts.speak_whole(v=voicing, text=text, response_format="wav")
        record.bytes_out = len(data)
        return data


def _plain(message: str, status: int) -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


@admin.register(Voice)
class VoiceAdmin(admin.ModelAdmin):
    form = VoiceForm
    list_display = ["name", "model", "language", "alias_list", "source", "enabled", "preview"]
    list_filter = ["model", "language", "enabled"]
    search_fields = ["name", "model__model_id"]
    readonly_fields = ["preview"]

    def get_urls(self) -> list[URLPattern]:
        preview = path(
            "<int:object_id>/preview/",
            self.admin_site.admin_view(self.preview_view),
            name="registry_voice_preview",
        )
        return [preview, *super().get_urls()]

    @admin.display(description="aliases")
    def alias_list(self, obj: Voice) -> str:
        return ", ".join(obj.aliases)

    @admin.display(description="preview")
    def preview(self, obj: Voice) -> SafeString | str:
        if obj.pk is None:
            return ""
        # The text box replays the sample with its own words (at most PREVIEW_CHARS of them).
        return format_html(
            '<span class="vp-preview"><audio controls preload="none" src="{url}"></audio> '
            '<input type="text" size="32" maxlength="{chars}" placeholder="{text}" aria-label="Sample text"> '
            '<button type="button" class="button" onclick="'
            "var a=this.parentNode.querySelector('audio'),t=this.previousElementSibling.value;"
            "a.src='{url}'+(t?'?text='+encodeURIComponent(t):'');a.play();"
            '">Speak</button></span>',
            url=_preview_url(obj),
            chars=PREVIEW_CHARS,
            text=PREVIEW_TEXT,
        )

    def preview_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """A short sample of the voice as audio/wav (?text=, at most PREVIEW_CHARS); an error as text."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        voice = Voice.objects.select_related("model").filter(pk=object_id).first()
        if voice is None:
            return _plain(f"There is no voice with id {object_id}.", 404)
        if not voice.model.enabled:
            model_id = voice.model.model_id
            return _plain(f"The model {model_id} is disabled; enable it to preview its voices.", 409)
        if not voice.enabled:
            return _plain(f"The voice {voice.name} is disabled; enable it to preview it.", 409)
        text = " ".join(request.GET.get("text", "").split())[:PREVIEW_CHARS] or PREVIEW_TEXT
        request_id = audit.new_request_id()
        try:
            data = async_to_sync(speak_sample)(
                model_id=voice.model.model_id, voice=voice.name, text=text, request_id=request_id
            )
        except Exception as exc:  # noqa: BLE001 - an operator reads why, never a 500 page
            error = as_openai_error(exc)
            # 4xx as the API would say; 503 when the model cannot load or the pool is full; a
            # failure of the engine itself as 502 (what served the sample failed, not the admin).
            status = error.status if error.status < 500 or error.status == 503 else 502
            response = _plain(f"No preview of {voice.name}: {error.message}", status)
        else:
            response = HttpResponse(data, content_type=audio.FORMATS["wav"])
        response["X-Request-Id"] = request_id  # its row in the request log
        return response
