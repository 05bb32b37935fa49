"""Text to speech: speak() for /v1/audio/speech and the voice-chat proxy.

Text is cleaned of markdown and emoji, split into sentences, and synthesised sentence by
sentence in one pool slot; audio leaves as soon as the first sentence is encoded. Every check
(model, voice, the engine accepting the voice) happens before the first byte, so a bad request is
an ordinary 400, never a broken stream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np

from registry import audit, catalog
from registry.errors import InvalidRequest, as_openai_error
from registry.models import ApiKey
from registry.speech import audio, workers
from registry.speech.cache import model_cache
from registry.speech.engines.base import EngineError, Samples, UnknownVoice, VoiceSpec
from registry.speech.text import SpeakableFilter, split_sentences


@dataclass(frozen=True)
class Voicing:
    """A resolved model and voice, and how fast to speak: all a worker needs."""

    model: catalog.ResolvedModel
    voice: VoiceSpec
    speed: float = 1.0


async def voicing(
    *,
    api_key: ApiKey | None,
    model: str | None,
    voice: str | None,
    speed: float = 1.0,
    model_param: str = "model",
    voice_param: str = "voice",
) -> Voicing:
    """Resolve model and voice names (ids or aliases).

    Raises ModelNotFound, InvalidRequest and PermissionDenied.
    """
    resolved = await catalog.model_for(task="tts", api_key=api_key, name=model, param=model_param)
    audit.add_model(resolved.model_id)
    if voice:
        spec = await catalog.voice_for(model=resolved, name=voice, param=voice_param)
    else:
        default = await catalog.default_voice(resolved)
        if default is None:
            raise InvalidRequest(
                f"The model '{resolved.model_id}' has no voices registered.",
                param=voice_param,
                code="invalid_voice",
            )
        spec = default
    return Voicing(model=resolved, voice=spec, speed=speed)


def speakable(text: str) -> list[str]:
    """The sentences of `text` worth speaking: markdown, fenced code and emoji removed."""
    speakable_piece = SpeakableFilter()
    return [s for s in map(speakable_piece, split_sentences(text)) if s]


def synthesize(v: Voicing, sentences: list[str]) -> Iterator[tuple[int, Samples]]:
    """(sample rate, chunk) as the engine produces them. Blocking: run it through `workers`.

    Raises InvalidRequest when the engine rejects the voice or the text.
    """
    with model_cache.use(v.model) as engine:
        for sentence in sentences:
            try:
                chunks = engine.synthesize(sentence, voice=v.voice, speed=v.speed)
                for chunk in chunks:
                    yield engine.sample_rate, chunk
            except UnknownVoice as exc:
                raise InvalidRequest(str(exc), param="voice", code="invalid_voice") from exc
            except EngineError as exc:
                raise InvalidRequest(str(exc), param="input", code="synthesis_failed") from exc


@dataclass
class SpeechStream:
    content_type: str
    chunks: AsyncIterator[bytes]


def encoded(v: Voicing, sentences: list[str], fmt: str, totals: dict[str, float]) -> Iterator[bytes]:
    encoder: audio.StreamEncoder | None = None
    for rate, chunk in synthesize(v, sentences):
        if encoder is None:
            encoder = audio.StreamEncoder(fmt, input_rate=rate)
        totals["seconds"] += audio.seconds(chunk, rate)
        data = encoder.encode(chunk)
        if data:
            yield data
    if encoder is not None:
        tail = encoder.close()
        if tail:
            yield tail


async def speak(*, v: Voicing, text: str, response_format: str) -> SpeechStream:
    """Start speaking `text`; returns once the first audio bytes exist (or raised why not)."""
    sentences = speakable(text)
    if not sentences:
        raise InvalidRequest("The input has nothing to speak.", param="input", code="empty_input")
    audit.note(characters_in=len(text))
    totals = {"seconds": 0.0}
    started = time.perf_counter()
    items = workers.stream(encoded, v, sentences, response_format, totals)
    try:
        first = await anext(items)
    except StopAsyncIteration:
        raise InvalidRequest("The input has nothing to speak.", param="input", code="empty_input") from None
    except BaseException:
        items.close()
        raise
    audit.note(tts_first_audio_ms=(time.perf_counter() - started) * 1000)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield first
            async for data in items:
                yield data
        except Exception as exc:
            audit.note(stream_error=as_openai_error(exc))
            raise
        finally:
            items.close()  # a client that went away stops synthesis before the next chunk
            audit.add_time("tts_ms", (time.perf_counter() - started) * 1000)
            audit.note(audio_seconds_out=totals["seconds"])

    return SpeechStream(content_type=audio.FORMATS[response_format], chunks=chunks())


async def speech(
    *, api_key: ApiKey | None, model: str | None, voice: str, speed: float, text: str, response_format: str
) -> SpeechStream:
    """/v1/audio/speech: resolve the model and voice, then start speaking."""
    v = await voicing(api_key=api_key, model=model, voice=voice, speed=speed)
    return await speak(v=v, text=text, response_format=response_format)


def _whole(v: Voicing, sentences: list[str], fmt: str) -> tuple[bytes, float]:
    rate = 24_000
    parts: list[Samples] = []
    for rate, chunk in synthesize(v, sentences):  # noqa: B007 - every chunk carries the engine's rate
        parts.append(chunk)
    if not parts:
        raise InvalidRequest("The reply has nothing to speak.", code="empty_input")
    samples = np.concatenate(parts)
    return audio.encode_whole(samples, fmt, input_rate=rate), audio.seconds(samples, rate)


async def speak_whole(*, v: Voicing, text: str, response_format: str) -> bytes:
    """The whole of `text` spoken and encoded as one file (a wav header with real sizes)."""
    sentences = speakable(text)
    if not sentences:
        raise InvalidRequest("The reply has nothing to speak.", code="empty_input")
    started = time.perf_counter()
    data, seconds = await workers.run(_whole, v, sentences, response_format)
    audit.add_time("tts_ms", (time.perf_counter() - started) * 1000)
    audit.add_time("audio_seconds_out", seconds)
    return data
