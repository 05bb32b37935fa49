"""Request shapes for /v1/audio/*: types and ranges only, no decisions."""

from __future__ import annotations

import json
import math
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import QueryDict
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request

from registry.api import parsers
from registry.api.responses import TRANSCRIPTION_FORMATS
from registry.speech.audio import FORMATS as AUDIO_FORMATS


async def request_data(request: Request) -> Any:
    """The parsed body, parsed off the event loop: a 25 MB multipart upload or a JSON body of base64
    audio is real CPU work (default executor, not the inference pool, whose slots are for models)."""
    return await sync_to_async(lambda: request.data, thread_sensitive=False)()


async def form_data(request: Request) -> dict[str, Any]:
    """The multipart form as a dict, its fields checked like a JSON body's (registry/api/parsers.py)."""
    data = form_to_dict(await request_data(request))
    parsers.check({k: v for k, v in data.items() if isinstance(v, str | list | dict)})
    return data


def form_to_dict(data: Any) -> dict[str, Any]:
    """A multipart form as a plain dict, in the shapes the openai SDK sends.

    Lists arrive as repeated `name[]` fields (the SDK's bracket form) or repeated `name`; objects
    as `name[key]` fields or as a JSON string. Single values stay strings, files stay files.
    """
    if not isinstance(data, QueryDict):
        return dict(data)
    result: dict[str, Any] = {}
    for key in data:
        values = data.getlist(key)
        if key.endswith("[]"):
            result.setdefault(key[:-2], []).extend(values)
        elif "[" in key and key.endswith("]"):
            name, _, inner = key[:-1].partition("[")
            target = result.setdefault(name, {})
            if isinstance(target, dict):
                target[inner] = values[-1]
        elif len(values) > 1:
            result[key] = values
        else:
            result[key] = values[0]
    return result


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "enum": ["auto"]},
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["server_vad"]},
                    "threshold": {"type": "number"},
                    "prefix_padding_ms": {"type": "integer"},
                    "silence_duration_ms": {"type": "integer"},
                },
                "required": ["type"],
            },
        ]
    }
)
class ChunkingStrategyField(serializers.Field):
    """`"auto"`, or `{"type": "server_vad", "threshold"?, "prefix_padding_ms"?, "silence_duration_ms"?}`."""

    default_error_messages = {"invalid": "Must be 'auto' or an object with type 'server_vad'."}
    _NUMBERS = ("threshold", "prefix_padding_ms", "silence_duration_ms")

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, str):
            if data == "auto":
                return {"type": "auto"}
            try:
                data = json.loads(data)
            except (ValueError, RecursionError):  # RecursionError: nested ~1,000 deep
                self.fail("invalid")
        if not isinstance(data, dict) or data.get("type") != "server_vad":
            self.fail("invalid")
        unknown = set(data) - {"type", *self._NUMBERS}
        if unknown:
            raise serializers.ValidationError(f"Unknown field(s): {', '.join(sorted(unknown))}.")
        value: dict[str, Any] = {"type": "server_vad"}
        for name in self._NUMBERS:
            if name in data:
                try:
                    value[name] = float(data[name])
                except (TypeError, ValueError):
                    raise serializers.ValidationError(f"'{name}' must be a number.") from None
                if not math.isfinite(value[name]):
                    raise serializers.ValidationError(f"'{name}' must be a finite number.")
        if not 0 <= value.get("threshold", 0.5) <= 1:
            raise serializers.ValidationError("'threshold' must be between 0 and 1.")
        for name in ("prefix_padding_ms", "silence_duration_ms"):
            if not 0 <= value.get(name, 0) <= 60_000:
                raise serializers.ValidationError(f"'{name}' must be between 0 and 60000.")
        return value

    def to_representation(self, value: Any) -> Any:
        return value


class AudioParams(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=True)
    model = serializers.CharField(required=False, allow_blank=True, default="")
    prompt = serializers.CharField(required=False, allow_blank=True, default="")
    temperature = serializers.FloatField(required=False, min_value=0.0, max_value=1.0, default=None)
    response_format = serializers.ChoiceField(choices=TRANSCRIPTION_FORMATS, required=False, default="json")


class TranscriptionParams(AudioParams):
    language = serializers.CharField(required=False, allow_blank=True, default="", max_length=10)
    timestamp_granularities = serializers.ListField(
        child=serializers.ChoiceField(choices=["segment", "word"]), required=False, default=list
    )
    include = serializers.ListField(
        child=serializers.ChoiceField(choices=["logprobs"]), required=False, default=list
    )
    stream = serializers.BooleanField(required=False, default=False)
    chunking_strategy = ChunkingStrategyField(required=False, default=None, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        fmt = attrs["response_format"]
        # Segment timestamps are the default, so OpenAI accepts `segment` with any format; word
        # timestamps exist only in verbose_json.
        if "word" in attrs["timestamp_granularities"] and fmt != "verbose_json":
            raise serializers.ValidationError(
                {"timestamp_granularities": "Word timestamps need response_format 'verbose_json'."}
            )
        if attrs["include"] and fmt != "json":
            raise serializers.ValidationError({"include": "include[]=logprobs needs response_format 'json'."})
        # With stream=true every format streams the same events (plain-text deltas, then the
        # whole text in transcript.text.done): the format shapes only a body answered whole.
        return attrs


class TranslationParams(AudioParams):
    pass


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        ]
    }
)
class VoiceField(serializers.Field):
    """A voice name, or `{"id": name}` as OpenAI's custom-voice form."""

    default_error_messages = {"invalid": "Must be a voice name or an object with an 'id'."}

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, dict):
            data = data.get("id")
        if not isinstance(data, str) or not data.strip():
            self.fail("invalid")
        return data.strip()

    def to_representation(self, value: Any) -> Any:
        return value


class StrictBooleanField(serializers.Field):
    """JSON true/false (or null) only: the raw value is forwarded, so "yes" must not pass as true."""

    default_error_messages = {"invalid": "Must be a boolean."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer, not a numeric string nor a boolean."""

    def to_internal_value(self, data: Any) -> int:
        if not isinstance(data, int) or isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A JSON string, not a number or a boolean turned into one (OpenAI refuses `"input": 123`).
    For JSON bodies only: a form's fields are all strings."""

    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class StrictFloatField(serializers.FloatField):
    """A JSON number, not a numeric string nor a boolean."""

    default_error_messages = {"invalid": "Must be a number."}

    def to_internal_value(self, data: Any) -> float:
        if not isinstance(data, int | float) or isinstance(data, bool):
            self.fail("invalid")
        return float(super().to_internal_value(data))


class SpeechParams(serializers.Serializer):
    model = StrictCharField(required=False, allow_blank=True, default="")
    input = StrictCharField(trim_whitespace=False)
    voice = VoiceField()
    response_format = serializers.ChoiceField(choices=list(AUDIO_FORMATS), required=False, default="mp3")
    speed = StrictFloatField(required=False, default=1.0, min_value=0.25, max_value=4.0)
    instructions = StrictCharField(required=False, allow_blank=True, default="", max_length=4096)
    stream_format = serializers.ChoiceField(choices=["audio", "sse"], required=False, default="audio")

    def validate_input(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The input must not be empty.")
        limit = settings.VOICEPROXY_MAX_TTS_CHARS
        if len(value) > limit:
            raise serializers.ValidationError(f"The input is {len(value)} characters; the limit is {limit}.")
        return value
