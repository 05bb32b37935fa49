"""Voices in the admin: their forms (one row each on their model's page) and a preview that plays a
short sample through the same service /v1/audio/speech uses (registry/voice_preview.py)."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from registry import audit
from registry.admin.fields import StringListField, StringListWidget
from registry.errors import as_openai_error
from registry.models import Voice
from registry.speech import audio
from registry.voice_preview import PREVIEW_CHARS, PREVIEW_TEXT, speak_sample


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


# --- the inline and the preview ----------------------------------------------------------------------


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
