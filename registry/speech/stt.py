"""Speech to text: transcribe() and translate(), whole or streamed, for /v1/audio/* and the chat proxy."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from registry import audit, catalog
from registry.errors import InvalidAudio, InvalidRequest, PayloadTooLarge
from registry.models import ApiKey
from registry.speech import audio, workers
from registry.speech.cache import model_cache
from registry.speech.engines.base import Samples, Segment, SpeechToText, Task, TranscriptionInfo, Word


@dataclass(frozen=True)
class SttOptions:
    """What the client asked for, validated for shape by the view's serializer."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    word_timestamps: bool = False
    vad_filter: bool = False
    vad_parameters: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Transcript:
    task: Task
    model_id: str
    text: str
    language: str
    duration: float
    segments: list[Segment]

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in (s.words or [])]

    @property
    def usage(self) -> dict[str, Any]:
        return {"type": "duration", "seconds": math.ceil(self.duration)}


def _join(segments: list[Segment]) -> str:
    return "".join(s.text for s in segments).strip()


async def _decode(data: bytes) -> tuple[Samples, float]:
    """Decode in the pool; the size and duration limits are settings."""
    if len(data) > settings.VOICEPROXY_MAX_AUDIO_BYTES:
        raise PayloadTooLarge(
            f"The audio file is {len(data)} bytes; the limit is {settings.VOICEPROXY_MAX_AUDIO_BYTES}.",
            param="file",
        )
    try:
        return await workers.run(
            audio.decode, data, sample_rate=16_000, max_seconds=settings.VOICEPROXY_MAX_AUDIO_SECONDS
        )
    except audio.AudioError as exc:
        raise InvalidAudio(str(exc), param="file") from exc


def _check(engine: SpeechToText, model: catalog.ResolvedModel, task: Task, options: SttOptions) -> None:
    """Checks that need the loaded model; raised before any work, so before any streamed byte."""
    if task == "translate" and not engine.multilingual:
        raise InvalidRequest(
            f"The model '{model.model_id}' is English-only and cannot translate; use a multilingual model.",
            param="model",
            code="model_cannot_translate",
        )
    if options.language and options.language not in engine.languages:
        raise InvalidRequest(
            f"The language '{options.language}' is not supported by the model '{model.model_id}'.",
            param="language",
            code="unsupported_language",
        )


def _start(
    engine: SpeechToText, samples: Samples, task: Task, options: SttOptions
) -> tuple[Any, TranscriptionInfo]:
    return engine.transcribe(
        samples,
        task=task,
        language=options.language or None,
        prompt=options.prompt or None,
        temperature=options.temperature,
        word_timestamps=options.word_timestamps,
        vad_filter=options.vad_filter,
        vad_parameters=options.vad_parameters or None,
    )


async def run(*, api_key: ApiKey | None, data: bytes, task: Task, options: SttOptions) -> Transcript:
    """Transcribe (or translate) a whole file. Raises OpenAIError subclasses for every bad input."""
    model = await catalog.model_for(task="stt", api_key=api_key, name=options.model)
    audit.add_model(model.model_id)
    samples, duration = await _decode(data)
    audit.note(audio_seconds_in=duration)

    def work() -> tuple[list[Segment], TranscriptionInfo]:
        with model_cache.use(model) as engine:
            _check(engine, model, task, options)
            segments, info = _start(engine, samples, task, options)
            # Decoding is lazy: drain the generator here, in the pool, not on the event loop.
            return list(segments), info

    started = time.perf_counter()
    segments, info = await workers.run(work)
    audit.add_time("stt_ms", (time.perf_counter() - started) * 1000)
    return Transcript(
        task=task,
        model_id=model.model_id,
        text=_join(segments),
        language=info.language,
        duration=duration,
        segments=segments,
    )


async def transcribe(*, api_key: ApiKey | None, data: bytes, options: SttOptions) -> Transcript:
    return await run(api_key=api_key, data=data, task="transcribe", options=options)


async def translate(*, api_key: ApiKey | None, data: bytes, options: SttOptions) -> Transcript:
    return await run(api_key=api_key, data=data, task="translate", options=options)


@dataclass
class SegmentStream:
    """Segments as the engine decodes them; `info` is known before the first one."""

    model_id: str
    duration: float
    info: TranscriptionInfo
    segments: AsyncIterator[Segment]


async def stream(*, api_key: ApiKey | None, data: bytes, task: Task, options: SttOptions) -> SegmentStream:
    """Start a transcription whose segments arrive as they are decoded.

    Every check (model, audio, language, translate ability) happens before this returns, so a
    view can still answer with a plain 400; the decoding runs in one pool slot and stops after
    the current segment when the consumer goes away.
    """
    model = await catalog.model_for(task="stt", api_key=api_key, name=options.model)
    audit.add_model(model.model_id)
    samples, duration = await _decode(data)
    audit.note(audio_seconds_in=duration)

    def produce() -> Iterator[TranscriptionInfo | Segment]:
        with model_cache.use(model) as engine:
            _check(engine, model, task, options)
            segments, info = _start(engine, samples, task, options)
            yield info
            yield from segments

    started = time.perf_counter()
    items = workers.stream(produce)
    try:
        info = await anext(items)
    except BaseException:
        items.close()
        raise

    async def segments() -> AsyncIterator[Segment]:
        try:
            async for segment in items:
                yield segment  # type: ignore[misc]
        finally:
            items.close()
            audit.add_time("stt_ms", (time.perf_counter() - started) * 1000)

    return SegmentStream(model_id=model.model_id, duration=duration, info=info, segments=segments())  # type: ignore[arg-type]
