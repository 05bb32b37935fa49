"""Text to speech without the gateway: the engine called directly, doing what registry/tts.py does.

`speak_stream` is `tts.encoded()` without the model cache and the pool: `speakable(text)` (the gateway's
splitting and cleaning), `engine.synthesize()` per sentence, one `StreamEncoder` made at the first chunk,
`close()` at the end. `speak_whole` is `tts._whole()`: every chunk, concatenated, `encode_whole`. Both
block in the calling thread and time themselves with perf_counter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from registry.speech import audio
from registry.speech.engines.base import Samples, TextToSpeech, VoiceSpec


@dataclass(frozen=True)
class Spoken:
    first_s: float  # start -> the first non-empty encoded bytes
    total_s: float  # start -> the encoder closed
    audio_s: float  # seconds of audio the engine produced
    nbytes: int
    sentence_done_s: tuple[float, ...] = ()  # start -> each sentence synthesised and encoded
    sentence_audio_s: tuple[float, ...] = ()  # each sentence's audio seconds


def speak_stream(engine: TextToSpeech, voice: VoiceSpec, sentences: list[str], fmt: str) -> Spoken:
    """Synthesise and stream-encode `sentences` (from `registry.speech.tts.speakable`) as `fmt`."""
    started = time.perf_counter()
    first = 0.0
    nbytes = 0
    samples = 0
    encoder: audio.StreamEncoder | None = None
    done: list[float] = []
    lengths: list[float] = []
    for sentence in sentences:
        before = samples
        for chunk in engine.synthesize(sentence, voice=voice, speed=1.0):
            if encoder is None:
                encoder = audio.StreamEncoder(fmt, input_rate=engine.sample_rate)
            samples += len(chunk)
            data = encoder.encode(chunk)
            if data and not first:
                first = time.perf_counter() - started
            nbytes += len(data)
        done.append(time.perf_counter() - started)
        lengths.append((samples - before) / engine.sample_rate)
    if encoder is not None:
        nbytes += len(encoder.close())
    total = time.perf_counter() - started
    return Spoken(
        first_s=first or total,
        total_s=total,
        audio_s=samples / engine.sample_rate,
        nbytes=nbytes,
        sentence_done_s=tuple(done),
        sentence_audio_s=tuple(lengths),
    )


def speak_whole(
    engine: TextToSpeech, voice: VoiceSpec, sentences: list[str], fmt: str
) -> tuple[bytes, float]:
    """Every sentence synthesised, concatenated and encoded as one `fmt` file; (the file, audio seconds)."""
    parts: list[Samples] = []
    for sentence in sentences:
        parts.extend(engine.synthesize(sentence, voice=voice, speed=1.0))
    samples = np.concatenate(parts)
    return audio.encode_whole(samples, fmt, input_rate=engine.sample_rate), audio.seconds(
        samples, engine.sample_rate
    )
