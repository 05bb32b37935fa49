"""The chat request's shape: what voiceproxy reads of a /v1/chat/completions body, nothing more.

Types and pairings only, no decisions; every other parameter is forwarded to the upstream as the
client sent it, so these serializers validate the raw body and the view forwards that body.
Errors name their parameter as OpenAI does (`messages[0].content[1].input_audio.format`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from registry.api.serializers import StrictBooleanField, StrictCharField, StrictIntegerField, VoiceField

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
AUDIO_IN_FORMATS = ("wav", "mp3")
# The client's name for each audio format -> ours (audio.FORMATS).
AUDIO_OUT_FORMATS = {"wav": "wav", "mp3": "mp3", "flac": "flac", "opus": "opus", "pcm16": "pcm", "aac": "aac"}


@dataclass(frozen=True)
class AudioBytes:
    data: bytes
    digest: str  # sha256 of data: the transcript cache's key


@extend_schema_field({"type": "array", "items": {"type": "string", "enum": ["text", "audio"]}})
class ModalitiesField(serializers.Field):
    default_error_messages = {"invalid": "Must be a list of 'text' and 'audio'."}

    def to_internal_value(self, data: Any) -> list[str]:
        if not isinstance(data, list) or not data or not all(m in ("text", "audio") for m in data):
            self.fail("invalid")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class Base64Field(serializers.CharField):
    """Megabytes of base64: DRF's CharField would also scan every character for surrogates in a
    Python loop (holding the GIL for milliseconds per request, bench/bench_load.py); the body's
    strings are already checked for them at the edge (registry/api/parsers.py), and strict base64
    decoding refuses anything else."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, allow_blank=True, **kwargs)
        validators: list[Any] = super().validators
        self.validators = [v for v in validators if not isinstance(v, ProhibitSurrogateCharactersValidator)]


class InputAudioSerializer(serializers.Serializer):
    data = Base64Field()
    format = serializers.ChoiceField(choices=AUDIO_IN_FORMATS)

    def validate_data(self, value: str) -> AudioBytes:
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise serializers.ValidationError("Not valid base64.", code="invalid_audio") from None
        return AudioBytes(data, hashlib.sha256(data).hexdigest())


class ContentPartSerializer(serializers.Serializer):
    """A content part; only `input_audio` parts are ours, the rest pass through as sent."""

    type = StrictCharField()
    input_audio = InputAudioSerializer(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["type"] == "input_audio" and "input_audio" not in attrs:
            raise serializers.ValidationError({"input_audio": "Must hold base64 'data' and a 'format'."})
        return attrs


@extend_schema_field(
    {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}], "nullable": True}
)
class ContentField(serializers.Field):
    """A message's content: a string, null, or a list of typed parts."""

    default_error_messages = {"invalid": "Must be a string or an array of parts."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            return data
        if not isinstance(data, list):
            self.fail("invalid")
        parts = ContentPartSerializer(data=data, many=True)
        if not parts.is_valid():
            raise serializers.ValidationError(parts.errors)
        return parts.validated_data

    def to_representation(self, value: Any) -> Any:
        return value


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = ContentField(required=False, allow_null=True)
    # An assistant's earlier spoken reply, {"id": ...}: its transcript is sent upstream instead.
    audio = serializers.JSONField(required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        content = attrs.get("content")
        if isinstance(content, list) and attrs["role"] != "user":
            for j, part in enumerate(content):
                if part["type"] == "input_audio":
                    raise serializers.ValidationError(
                        {"content": [{}] * j + ["input_audio is only allowed in user messages."]}
                    )
        audio = attrs.get("audio")
        if (
            attrs["role"] == "assistant"
            and isinstance(audio, dict)
            and not (isinstance(audio.get("id"), str) and audio["id"])
        ):
            raise serializers.ValidationError({"audio": {"id": "Must be a string."}})
        return attrs


class ChatAudioSerializer(serializers.Serializer):
    voice = VoiceField()
    format = serializers.ChoiceField(choices=list(AUDIO_OUT_FORMATS))


class ChatCompletionParams(serializers.Serializer):
    """What voiceproxy reads of the body; every other parameter goes upstream untouched."""

    model = StrictCharField()
    messages = MessageSerializer(many=True, allow_empty=False)
    n = StrictIntegerField(required=False, allow_null=True, min_value=1)
    stream = StrictBooleanField(required=False, allow_null=True)
    stream_options = serializers.DictField(required=False, allow_null=True)
    modalities = ModalitiesField(required=False, allow_null=True)
    audio = ChatAudioSerializer(required=False, allow_null=True)
    transcription_model = StrictCharField(required=False, allow_null=True)
    speech_model = StrictCharField(required=False, allow_null=True)

    def validate_n(self, value: int | None) -> int | None:
        limit = settings.VOICEPROXY_MAX_CHOICES
        if value is not None and value > limit:
            raise serializers.ValidationError(f"Must be an integer from 1 to {limit}.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        wants_audio = "audio" in (attrs.get("modalities") or ["text"])
        audio = attrs.get("audio")
        # `audio` without "audio" in modalities is accepted and ignored, as OpenAI does: text out.
        if wants_audio and audio is None:
            raise serializers.ValidationError(
                {"audio": "'modalities' with 'audio' needs the 'audio' parameter: {voice, format}."}
            )
        if wants_audio and audio is not None and attrs.get("stream") and audio["format"] != "pcm16":
            raise serializers.ValidationError(
                {"audio": {"format": "Streamed audio is sent as 'pcm16'; set 'audio.format' to 'pcm16'."}}
            )
        if attrs.get("stream_options") is not None and not attrs.get("stream"):
            raise serializers.ValidationError(
                {"stream_options": "The 'stream_options' parameter is only allowed when 'stream' is enabled."}
            )
        attrs["wants_audio"] = wants_audio
        return attrs
