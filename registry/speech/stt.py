"""Speech to text: transcribe or translate audio, whole or as segments are decoded.

    resolve()            a model name -> the enabled STT model (ModelNotFound, PermissionDenied...)
    run(), transcribe(), translate()
                         container bytes (wav, mp3, ogg...) or raw `audio.Pcm` samples -> Transcript
    stream()             the same, segments as they are decoded (checks done before it returns)
    transcribe_on()      the pipeline on a loaded engine: what the pool runs and the bench times
                         (no speech -> no segments; long audio -> VAD-cut pieces, `plan_on()` and
                         `piece_on()`, which the services decode several at once)
    server_vad()         OpenAI's `server_vad` knobs -> faster-whisper's Silero VAD parameters

For /v1/audio/*, the chat proxy's input_audio parts, and Realtime's buffered PCM alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings

from registry import audit, catalog
from registry.errors import InvalidAudio, InvalidRequest, PayloadTooLarge
from registry.models import ApiKey
from registry.resolved import ResolvedModel
from registry.speech import audio, workers
from registry.speech.cache import model_cache
from registry.speech.engines.base import (
    CannotTranslate,
    Piece,
    Samples,
    Segment,
    SpeechToText,
    Task,
    TranscriptionInfo,
    UnsupportedLanguage,
    Word,
)

SAMPLE_RATE = 16_000  # what Whisper listens at

# Audio this long or longer is cut by Silero VAD into pieces of up to 30 s of speech, each decoded as
# one window (one segment per piece, on the original timeline), pieces_at_once() of them at a time
# on the pool's threads; streams included. Below one window's worth there is nothing to cut, and the
# sequential path (a segment per phrase) stays. Measured on 2 cores (bench/bench_long_audio.py,
# tiny.en, 60 s clip): 3.49 s sequential, 2.23 s as one batch of pieces (faster-whisper's
# BatchedInferencePipeline, batch 4), 1.31 s as pieces two at a time on CTranslate2's two workers,
# the word error rate the same (0.018-0.042 run to run, both ways); 5 min: 18.6, 8.4 and 5.9 s.
LONG_FROM_S = 30.0


def pieces_at_once() -> int:
    """A long transcription's pieces decoded at once: one per pool thread (and CTranslate2 worker)."""
    return max(1, int(settings.VOICEPROXY_INFERENCE_THREADS))


def server_vad(
    *,
    threshold: float | None = None,
    prefix_padding_ms: float | None = None,
    silence_duration_ms: float | None = None,
) -> dict[str, float]:
    """OpenAI's server_vad knobs (transcription `chunking_strategy`, Realtime `turn_detection`)
    mapped onto Silero VAD's, as faster-whisper's VadOptions names them; unset knobs keep its defaults."""
    parameters: dict[str, float] = {}
    if threshold is not None:
        parameters["threshold"] = threshold
    if silence_duration_ms is not None:
        parameters["min_silence_duration_ms"] = int(silence_duration_ms)
    if prefix_padding_ms is not None:
        parameters["speech_pad_ms"] = int(prefix_padding_ms)
    return parameters


@dataclass(frozen=True)
class SttOptions:
    """What the client asked for, validated for shape by its edge."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    word_timestamps: bool = False
    vad_filter: bool = False  # only when asked: never silently
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


AudioSource = bytes | audio.Pcm
"""Encoded audio (a file's bytes) or raw samples with their rate (a Realtime input buffer)."""


async def resolve(*, api_key: ApiKey | None, name: str | None, param: str = "model") -> ResolvedModel:
    """The enabled STT model `name` names (the default when empty), recorded on the audit scope."""
    model = await catalog.model_for(task="stt", api_key=api_key, name=name, param=param)
    audit.add_model(model.model_id)
    return model


def _samples(source: AudioSource) -> tuple[Samples, float]:
    """16 kHz mono samples and their duration. Blocking: run it in the pool. Raises AudioError."""
    max_seconds = settings.VOICEPROXY_MAX_AUDIO_SECONDS
    if isinstance(source, audio.Pcm):
        duration = audio.seconds(source.samples, source.rate)
        if duration > max_seconds:
            raise audio.AudioError(f"The audio is {duration:.0f} s long; the limit is {max_seconds:.0f} s.")
        return audio.resample(source.samples, source.rate, SAMPLE_RATE), duration
    return audio.decode(source, sample_rate=SAMPLE_RATE, max_seconds=max_seconds)


async def _decode(source: AudioSource) -> tuple[Samples, float]:
    """Decode in the pool; the size and duration limits are settings."""
    if isinstance(source, bytes) and len(source) > settings.VOICEPROXY_MAX_AUDIO_BYTES:
        raise PayloadTooLarge(
            f"The audio file is {len(source)} bytes; the limit is {settings.VOICEPROXY_MAX_AUDIO_BYTES}.",
            param="file",
        )
    try:
        return await workers.run(_samples, source)
    except audio.AudioError as exc:
        raise InvalidAudio(str(exc), param="file") from exc


@contextlib.contextmanager
def _engine_errors(model_id: str, options: SttOptions) -> Iterator[None]:
    try:
        yield
    except CannotTranslate as exc:
        raise InvalidRequest(
            f"The model '{model_id}' is English-only and cannot translate; use a multilingual model.",
            param="model",
            code="model_cannot_translate",
        ) from exc
    except UnsupportedLanguage as exc:
        raise InvalidRequest(
            f"The language '{options.language}' is not supported by the model '{model_id}'.",
            param="language",
            code="unsupported_language",
        ) from exc


def plan_on(
    engine: SpeechToText, samples: Samples, *, model_id: str, task: Task, options: SttOptions
) -> tuple[list[Piece], TranscriptionInfo]:
    """Long audio's pieces and language (blocking: VAD, language detection). Raises InvalidRequest
    as `transcribe_on` does."""
    with _engine_errors(model_id, options):
        return engine.plan(
            samples,
            task=task,
            language=options.language or None,
            vad_parameters=options.vad_parameters or None,
        )


def piece_on(
    engine: SpeechToText, samples: Samples, piece: Piece, *, task: Task, language: str, options: SttOptions
) -> list[Segment]:
    """One piece of `plan_on`, decoded (blocking)."""
    return engine.transcribe_piece(
        samples,
        piece,
        task=task,
        language=language,
        prompt=options.prompt or None,
        temperature=options.temperature,
        word_timestamps=options.word_timestamps,
    )


def _numbered(segments: Iterator[Segment]) -> Iterator[Segment]:
    for index, segment in enumerate(segments):
        yield dataclasses.replace(segment, id=index)


def transcribe_on(
    engine: SpeechToText, samples: Samples, *, model_id: str, task: Task, options: SttOptions
) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """Start the engine on 16 kHz samples; segments decode lazily as the iterator is drained.

    Audio without speech gives no segments; audio of LONG_FROM_S or more is cut into pieces,
    decoded here one after another (the services decode pieces_at_once() at a time, `_long`).
    Blocking: run it (and drain it) in the pool. Raises InvalidRequest (`model_cannot_translate`,
    `unsupported_language`) before any decoding.
    """
    if len(samples) >= LONG_FROM_S * engine.sample_rate:
        pieces, info = plan_on(engine, samples, model_id=model_id, task=task, options=options)
        decoded = (
            segment
            for piece in pieces
            for segment in piece_on(
                engine, samples, piece, task=task, language=info.language, options=options
            )
        )
        return _numbered(decoded), info
    with _engine_errors(model_id, options):
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


async def run(
    *,
    api_key: ApiKey | None,
    source: AudioSource,
    task: Task,
    options: SttOptions,
    model: ResolvedModel | None = None,
) -> Transcript:
    """Transcribe (or translate) whole audio. Raises OpenAIError subclasses for every bad input.

    `model`, when the caller has resolved it already, is used instead of `options.model`.
    """
    model = model or await resolve(api_key=api_key, name=options.model)
    samples, duration = await _decode(source)
    audit.usage().audio_seconds_in = duration

    started = time.perf_counter()
    # Decoded in the pool a segment (a window, or a piece) at a time, each its own unit: a long
    # transcription takes turns with other requests' work instead of holding a thread.
    items = _items(model, samples, task, options)
    try:
        info = await anext(items)
        segments = [item async for item in items if isinstance(item, Segment)]
    finally:
        await items.aclose()
    audit.usage().span("stt_ms", started)
    assert isinstance(info, TranscriptionInfo)  # noqa: S101 - _produce() yields it first, always
    return Transcript(
        task=task,
        model_id=model.model_id,
        text="".join(s.text for s in segments).strip(),
        language=info.language,
        duration=duration,
        segments=segments,
    )


async def transcribe(*, api_key: ApiKey | None, source: AudioSource, options: SttOptions) -> Transcript:
    return await run(api_key=api_key, source=source, task="transcribe", options=options)


async def translate(*, api_key: ApiKey | None, source: AudioSource, options: SttOptions) -> Transcript:
    return await run(api_key=api_key, source=source, task="translate", options=options)


def _produce(
    model: ResolvedModel, samples: Samples, task: Task, options: SttOptions
) -> Iterator[TranscriptionInfo | Segment]:
    """The info, then the segments as they are decoded (blocking: the pool runs it)."""
    with model_cache.stt(model) as engine:
        segments, info = transcribe_on(engine, samples, model_id=model.model_id, task=task, options=options)
        yield info
        yield from segments


def _plan(
    model: ResolvedModel, samples: Samples, task: Task, options: SttOptions
) -> tuple[list[Piece], TranscriptionInfo]:
    with model_cache.stt(model) as engine:
        return plan_on(engine, samples, model_id=model.model_id, task=task, options=options)


def _piece(
    model: ResolvedModel, samples: Samples, piece: Piece, task: Task, language: str, options: SttOptions
) -> list[Segment]:
    with model_cache.stt(model) as engine:
        return piece_on(engine, samples, piece, task=task, language=language, options=options)


async def _items(
    model: ResolvedModel, samples: Samples, task: Task, options: SttOptions
) -> AsyncGenerator[TranscriptionInfo | Segment, None]:
    """The info, then the segments in order, decoded in the pool (ServerBusy before any work)."""
    if len(samples) >= LONG_FROM_S * SAMPLE_RATE:
        async for item in _long(model, samples, task, options):
            yield item
        return
    items = workers.stream(_produce, model, samples, task, options)
    try:
        async for item in items:
            yield item
    finally:
        items.close()


R = TypeVar("R")


async def _long(
    model: ResolvedModel, samples: Samples, task: Task, options: SttOptions
) -> AsyncGenerator[TranscriptionInfo | Segment, None]:
    """Long audio: the plan, then its pieces pieces_at_once() at a time, each a pool unit of this
    request (so they take turns with other requests' work), their segments given in order as the
    pieces before them are done. One reservation, taken first (or 503), covers every call, so a
    transcription that starts is not refused half way; its overlapping pieces are admitted beside it.
    (A caller that holds a reservation already, a Realtime session, lends it instead.)"""
    lent = workers.held()
    reserved = lent or workers.reservation()
    context = contextvars.copy_context()
    context.run(workers.use, reserved)
    loop = asyncio.get_running_loop()

    def start(fn: Callable[..., R], *args: Any) -> asyncio.Task[R]:
        return loop.create_task(workers.run(fn, *args), context=context)

    running: deque[asyncio.Task[list[Segment]]] = deque()
    try:
        pieces, info = await start(_plan, model, samples, task, options)
        yield info
        waiting = iter(pieces)
        for piece in itertools.islice(waiting, pieces_at_once()):
            running.append(start(_piece, model, samples, piece, task, info.language, options))
        count = 0
        while running:
            segments = await running.popleft()
            for piece in itertools.islice(waiting, 1):
                running.append(start(_piece, model, samples, piece, task, info.language, options))
            for segment in segments:
                yield dataclasses.replace(segment, id=count)
                count += 1
    finally:
        for task_ in running:
            task_.cancel()
        if lent is None:
            workers.release(reserved)


@dataclass
class SegmentStream:
    """Segments as the engine decodes them; `info` is known before the first one."""

    model_id: str
    duration: float
    info: TranscriptionInfo
    segments: AsyncIterator[Segment]


async def stream(
    *, api_key: ApiKey | None, source: AudioSource, task: Task, options: SttOptions
) -> SegmentStream:
    """Start a transcription whose segments arrive as they are decoded.

    Every check (model, audio, language, translate ability) happens before this returns, so an
    edge can still answer with a plain 400; the decoding runs in the pool (one slot, or one
    reservation for long audio's pieces) and stops after the current segment, or the pieces under
    way, when the consumer goes away.
    """
    model = await resolve(api_key=api_key, name=options.model)
    samples, duration = await _decode(source)
    audit.usage().audio_seconds_in = duration

    started = time.perf_counter()
    items = _items(model, samples, task, options)
    try:
        info = await anext(items)
    except BaseException:
        await items.aclose()
        raise
    assert isinstance(info, TranscriptionInfo)  # noqa: S101 - produce() yields it first, always

    async def segments() -> AsyncIterator[Segment]:
        try:
            async for item in items:
                if isinstance(item, Segment):
                    yield item
        finally:
            await items.aclose()
            audit.usage().span("stt_ms", started)

    return SegmentStream(model_id=model.model_id, duration=duration, info=info, segments=segments())
