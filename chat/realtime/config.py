"""A Realtime session's configuration: OpenAI's defaults, and `session.update` checked field by field.

`SessionConfig.updated(data)` returns a new configuration or raises InvalidRequest naming the
field (`session.audio.input.format.type`), so a bad update changes nothing. `render()` gives the
session object as `session.created` / `session.updated` carry it. The same checks serve a
`response.create`'s overrides and a client secret's session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from registry.errors import InvalidRequest
from registry.speech import audio

Kind = Literal["realtime", "transcription"]
AudioFormat = Literal["pcm", "pcmu", "pcma"]

PCM_RATE = audio.OPENAI_PCM_RATE
FORMAT_RATES: dict[str, int] = {"pcm": PCM_RATE, "pcmu": audio.G711_RATE, "pcma": audio.G711_RATE}
_FORMAT_TYPES: dict[str, AudioFormat] = {"audio/pcm": "pcm", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
# The beta protocol's names, still sent by older clients.
_LEGACY_FORMATS: dict[str, AudioFormat] = {"pcm16": "pcm", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}

# OpenAI's server_vad defaults; semantic_vad's eagerness mapped onto a silence length (we hear
# pauses, not meaning).
VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
    "idle_timeout_ms": None,
}
_EAGERNESS_SILENCE_MS = {"low": 1000, "medium": 600, "auto": 600, "high": 300}

# Accepted and echoed back; our pipeline has no use for them.
_INERT = ("tracing", "truncation", "include", "prompt", "reasoning", "parallel_tool_calls", "metadata")


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"'{param}' must be an object.", param, "invalid_type")
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(f"'{param}' must be a number from {low:g} to {high:g}.", param)
    return float(value)


def _flag(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"'{param}' must be true or false.", param, "invalid_type")
    return value


def _text(value: Any, param: str, *, nullable: bool = True) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise _bad(f"'{param}' must be a string.", param, "invalid_type")
    return value


def _unknown(data: dict[str, Any], known: set[str], param: str) -> None:
    for name in data:
        if name not in known:
            raise _bad(f"Unknown parameter: '{param}.{name}'.", f"{param}.{name}", "unknown_parameter")


def audio_format(value: Any, param: str) -> AudioFormat:
    """`{"type": "audio/pcm", "rate": 24000}`, `{"type": "audio/pcmu"}`... (or a beta name, "pcm16")."""
    if isinstance(value, str) and value in _LEGACY_FORMATS:
        return _LEGACY_FORMATS[value]
    data = _object(value, param)
    _unknown(data, {"type", "rate"}, param)
    given = data.get("type", "audio/pcm")
    kind = _FORMAT_TYPES.get(given) if isinstance(given, str) else None
    if kind is None:
        raise _bad(
            f"'{param}.type' must be one of audio/pcm, audio/pcmu, audio/pcma; got {data.get('type')!r}.",
            f"{param}.type",
        )
    rate = data.get("rate")
    if rate is not None and rate != FORMAT_RATES[kind]:
        raise _bad(f"'{param}.rate' must be {FORMAT_RATES[kind]} for {data.get('type')}.", f"{param}.rate")
    return kind


def render_format(kind: AudioFormat) -> dict[str, Any]:
    if kind == "pcm":
        return {"type": "audio/pcm", "rate": PCM_RATE}
    return {"type": f"audio/{kind}"}


def turn_detection(value: Any, param: str, current: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    data = _object(value, param)
    kind = data.get("type", (current or VAD_DEFAULTS)["type"])
    if kind not in ("server_vad", "semantic_vad"):
        raise _bad(f"'{param}.type' must be server_vad or semantic_vad.", f"{param}.type")
    base = dict(current) if current and current["type"] == kind else {**VAD_DEFAULTS, "type": kind}
    known = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
             "interrupt_response", "idle_timeout_ms", "eagerness"}  # fmt: skip
    _unknown(data, known, param)
    if "threshold" in data:
        base["threshold"] = _number(data["threshold"], f"{param}.threshold", 0.0, 1.0)
    for name, high in (("prefix_padding_ms", 5000), ("silence_duration_ms", 10000)):
        if name in data:
            base[name] = int(_number(data[name], f"{param}.{name}", 0, high))
    if data.get("idle_timeout_ms") is not None:
        base["idle_timeout_ms"] = int(
            _number(data["idle_timeout_ms"], f"{param}.idle_timeout_ms", 5000, 30000)
        )
    for name in ("create_response", "interrupt_response"):
        if name in data:
            base[name] = _flag(data[name], f"{param}.{name}")
    if kind == "semantic_vad":
        eagerness = data.get("eagerness", base.get("eagerness", "auto"))
        if not isinstance(eagerness, str) or eagerness not in _EAGERNESS_SILENCE_MS:
            raise _bad(f"'{param}.eagerness' must be low, medium, high or auto.", f"{param}.eagerness")
        base["eagerness"] = eagerness
        base["silence_duration_ms"] = _EAGERNESS_SILENCE_MS[eagerness]
    return base


def transcription(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    data = _object(value, param)
    _unknown(data, {"model", "language", "prompt", "delay", "keywords", "languages"}, param)
    out: dict[str, Any] = {}
    for name in ("model", "language", "prompt"):
        if data.get(name) is not None:
            out[name] = _text(data[name], f"{param}.{name}")
    return out


def tools(value: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad(f"'{param}' must be an array of tools.", param, "invalid_type")
    out = []
    for i, tool in enumerate(value):
        data = _object(tool, f"{param}[{i}]")
        if data.get("type", "function") != "function":
            raise _bad(f"'{param}[{i}].type': only function tools are supported.", f"{param}[{i}].type")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(
                f"'{param}[{i}].name' is required.", f"{param}[{i}].name", "missing_required_parameter"
            )
        parameters = data.get("parameters", {"type": "object", "properties": {}})
        _object(parameters, f"{param}[{i}].parameters")
        out.append(
            {
                "type": "function",
                "name": name,
                "description": data.get("description") or "",
                "parameters": parameters,
            }
        )
    return out


def tool_choice(value: Any, param: str) -> str | dict[str, Any]:
    if value in ("auto", "none", "required"):
        return str(value)
    data = _object(value, param)
    if data.get("type") != "function" or not isinstance(data.get("name"), str):
        raise _bad(f"'{param}' must be auto, none, required or {{type: function, name}}.", param)
    return {"type": "function", "name": data["name"]}


def max_output_tokens(value: Any, param: str) -> int | Literal["inf"]:
    if value == "inf":
        return "inf"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise _bad(f"'{param}' must be an integer from 1 to 4096, or \"inf\".", param)
    return value


def modalities(value: Any, param: str) -> list[str]:
    if value not in (["audio"], ["text"], ["text", "audio"], ["audio", "text"]):
        raise _bad(f'\'{param}\' must be ["audio"] or ["text"].', param)
    # OpenAI answers either in audio (with its transcript) or in text alone.
    return ["audio"] if "audio" in value else ["text"]


def voice(value: Any, param: str) -> str:
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    if not isinstance(value, str) or not value:
        raise _bad(f"'{param}' must be a voice name or {{id}}.", param)
    return value


@dataclass(frozen=True)
class SessionConfig:
    id: str
    model: str
    kind: Kind = "realtime"
    instructions: str = ""
    output_modalities: tuple[str, ...] = ("audio",)
    input_format: AudioFormat = "pcm"
    output_format: AudioFormat = "pcm"
    transcription: dict[str, Any] | None = field(default_factory=dict)
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(VAD_DEFAULTS))
    voice: str | None = None  # None: the speech model's first voice
    speech_model: str | None = None  # our extension: which TTS model speaks (the default when None)
    speed: float = 1.0
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] = "auto"
    temperature: float | None = None
    max_output_tokens: int | Literal["inf"] = "inf"
    inert: dict[str, Any] = field(default_factory=dict)
    expires_at: int = 0

    def updated(self, data: Any, param: str = "session") -> SessionConfig:
        """This configuration with `data` (a `session.update`'s session) applied; InvalidRequest
        naming the field when any part of it is wrong."""
        data = _object(data, param)
        changes: dict[str, Any] = {}
        kind = data.get("type", self.kind)
        if kind not in ("realtime", "transcription"):
            raise _bad(f"'{param}.type' must be realtime or transcription.", f"{param}.type")
        if kind != self.kind:
            raise _bad("A session's type cannot change once it is created.", f"{param}.type")
        known = {"type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
                 "temperature", "max_output_tokens", "id", "object", "expires_at", "speech_model",
                 "input_audio_format", "output_audio_format", "voice", "turn_detection",
                 "input_audio_transcription", "modalities", *_INERT}  # fmt: skip
        _unknown(data, known, param)
        if "model" in data:
            changes["model"] = _text(data["model"], f"{param}.model", nullable=False)
        if "instructions" in data:
            changes["instructions"] = _text(data["instructions"], f"{param}.instructions") or ""
        if "output_modalities" in data:
            changes["output_modalities"] = tuple(
                modalities(data["output_modalities"], f"{param}.output_modalities")
            )
        if "modalities" in data:  # beta name
            changes["output_modalities"] = tuple(modalities(data["modalities"], f"{param}.modalities"))
        if "tools" in data:
            changes["tools"] = tuple(tools(data["tools"], f"{param}.tools"))
        if "tool_choice" in data:
            changes["tool_choice"] = tool_choice(data["tool_choice"], f"{param}.tool_choice")
        if "temperature" in data:
            changes["temperature"] = (
                None
                if data["temperature"] is None
                else _number(data["temperature"], f"{param}.temperature", 0, 2)
            )
        if "max_output_tokens" in data:
            changes["max_output_tokens"] = max_output_tokens(
                data["max_output_tokens"], f"{param}.max_output_tokens"
            )
        if "speech_model" in data:
            changes["speech_model"] = _text(data["speech_model"], f"{param}.speech_model")
        for name in _INERT:
            if name in data:
                changes["inert"] = {**self.inert, **changes.get("inert", {}), name: data[name]}
        # The beta protocol's flat fields, then GA's `audio` object (which wins).
        if "input_audio_format" in data:
            changes["input_format"] = audio_format(data["input_audio_format"], f"{param}.input_audio_format")
        if "output_audio_format" in data:
            changes["output_format"] = audio_format(
                data["output_audio_format"], f"{param}.output_audio_format"
            )
        if "voice" in data:
            changes["voice"] = voice(data["voice"], f"{param}.voice")
        if "turn_detection" in data:
            changes["turn_detection"] = turn_detection(
                data["turn_detection"], f"{param}.turn_detection", self.turn_detection
            )
        if "input_audio_transcription" in data:
            changes["transcription"] = transcription(
                data["input_audio_transcription"], f"{param}.input_audio_transcription"
            )
        if "audio" in data:
            changes.update(self._audio(_object(data["audio"], f"{param}.audio"), f"{param}.audio"))
        return replace(self, **changes)

    def _audio(self, data: dict[str, Any], param: str) -> dict[str, Any]:
        _unknown(data, {"input", "output"}, param)
        changes: dict[str, Any] = {}
        if "input" in data:
            given = _object(data["input"], f"{param}.input")
            _unknown(
                given, {"format", "transcription", "turn_detection", "noise_reduction"}, f"{param}.input"
            )
            if "format" in given:
                changes["input_format"] = audio_format(given["format"], f"{param}.input.format")
            if "transcription" in given:
                changes["transcription"] = transcription(
                    given["transcription"], f"{param}.input.transcription"
                )
            if "turn_detection" in given:
                changes["turn_detection"] = turn_detection(
                    given["turn_detection"], f"{param}.input.turn_detection", self.turn_detection
                )
            if "noise_reduction" in given:
                changes["inert"] = {**self.inert, "noise_reduction": given["noise_reduction"]}
        if "output" in data:
            if self.kind == "transcription":
                raise _bad(
                    "A transcription session has no audio output.", f"{param}.output", "unknown_parameter"
                )
            given = _object(data["output"], f"{param}.output")
            _unknown(given, {"format", "voice", "speed"}, f"{param}.output")
            if "format" in given:
                changes["output_format"] = audio_format(given["format"], f"{param}.output.format")
            if "voice" in given:
                changes["voice"] = voice(given["voice"], f"{param}.output.voice")
            if "speed" in given:
                changes["speed"] = _number(given["speed"], f"{param}.output.speed", 0.25, 4.0)
        return changes

    def render(self, default_voice: str | None = None) -> dict[str, Any]:
        """The session object of `session.created` / `session.updated`; `default_voice` names the
        voice spoken when the session names none (the speech model's first)."""
        audio_in = {
            "format": render_format(self.input_format),
            "transcription": self.transcription,
            "noise_reduction": self.inert.get("noise_reduction"),
            "turn_detection": self.turn_detection,
        }
        common = {"id": self.id, "expires_at": self.expires_at, "include": self.inert.get("include")}
        if self.kind == "transcription":
            return {
                "type": "transcription",
                "object": "realtime.transcription_session",
                **common,
                "audio": {"input": audio_in},
            }
        session = {
            "type": "realtime",
            "object": "realtime.session",
            **common,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "audio": {
                "input": audio_in,
                "output": {
                    "format": render_format(self.output_format),
                    "voice": self.voice or default_voice,
                    "speed": self.speed,
                },
            },
            "tools": list(self.tools),
            "tool_choice": self.tool_choice,
            "max_output_tokens": self.max_output_tokens,
            "tracing": self.inert.get("tracing"),
            "truncation": self.inert.get("truncation", "auto"),
            "prompt": self.inert.get("prompt"),
            "speech_model": self.speech_model,
        }
        if self.temperature is not None:
            session["temperature"] = self.temperature
        return session


def new_config(*, session_id: str, model: str, kind: Kind, max_seconds: int) -> SessionConfig:
    return SessionConfig(
        id=session_id,
        model=model,
        kind=kind,
        expires_at=int(time.time()) + max_seconds,
    )
