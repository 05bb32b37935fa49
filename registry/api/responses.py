"""Response bodies for the audio endpoints: json, text, srt, vtt, verbose_json, and SSE events."""

from __future__ import annotations

import base64
import math
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

from registry.api import sse
from registry.speech.engines.base import Segment, Word
from registry.speech.stt import SegmentStream, Transcript
from registry.speech.tts import SpeechStream

TRANSCRIPTION_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")

# verbose_json names the language as OpenAI does ("english"), not by its code.
LANGUAGE_NAMES = {
    "en": "english",
    "zh": "chinese",
    "de": "german",
    "es": "spanish",
    "ru": "russian",
    "ko": "korean",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "tr": "turkish",
    "pl": "polish",
    "ca": "catalan",
    "nl": "dutch",
    "ar": "arabic",
    "sv": "swedish",
    "it": "italian",
    "id": "indonesian",
    "hi": "hindi",
    "fi": "finnish",
    "vi": "vietnamese",
    "he": "hebrew",
    "uk": "ukrainian",
    "el": "greek",
    "ms": "malay",
    "cs": "czech",
    "ro": "romanian",
    "da": "danish",
    "hu": "hungarian",
    "ta": "tamil",
    "no": "norwegian",
    "th": "thai",
    "ur": "urdu",
    "hr": "croatian",
    "bg": "bulgarian",
    "lt": "lithuanian",
    "la": "latin",
    "cy": "welsh",
    "sk": "slovak",
    "fa": "persian",
    "lv": "latvian",
    "bn": "bengali",
    "sr": "serbian",
    "sl": "slovenian",
    "et": "estonian",
    "mk": "macedonian",
    "is": "icelandic",
    "af": "afrikaans",
    "sw": "swahili",
    "gl": "galician",
    "mr": "marathi",
    "tl": "tagalog",
    "eu": "basque",
    "hy": "armenian",
}


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(segments: list[Segment]) -> str:
    blocks = [
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def vtt(segments: list[Segment]) -> str:
    cues = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def _segment_object(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": segment.tokens,
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def _word_object(word: Word) -> dict[str, Any]:
    return {"word": word.word.strip(), "start": round(word.start, 3), "end": round(word.end, 3)}


def logprobs(words: list[Word]) -> list[dict[str, Any]]:
    """Per-word log probabilities, in the shape of OpenAI's `include[]=logprobs`."""
    return [
        {"token": w.word, "logprob": math.log(max(w.probability, 1e-12)), "bytes": list(w.word.encode())}
        for w in words
    ]


def transcription_response(
    result: Transcript, response_format: str, *, granularities: list[str], include_logprobs: bool
) -> HttpResponse:
    if response_format == "text":
        return HttpResponse(result.text + "\n", content_type="text/plain; charset=utf-8")
    if response_format == "srt":
        return HttpResponse(srt(result.segments), content_type="text/plain; charset=utf-8")
    if response_format == "vtt":
        return HttpResponse(vtt(result.segments), content_type="text/vtt; charset=utf-8")
    if response_format == "verbose_json":
        body: dict[str, Any] = {
            "task": result.task,
            "language": LANGUAGE_NAMES.get(result.language, result.language),
            "duration": round(result.duration, 3),
            "text": result.text,
        }
        if not granularities or "segment" in granularities:
            body["segments"] = [_segment_object(s) for s in result.segments]
        if "word" in granularities:
            body["words"] = [_word_object(w) for w in result.words]
        body["usage"] = result.usage
        return JsonResponse(body)
    body = {"text": result.text, "usage": result.usage}
    if include_logprobs:
        body["logprobs"] = logprobs(result.words)
    return JsonResponse(body)


def transcription_stream(stream: SegmentStream, *, include_logprobs: bool) -> StreamingHttpResponse:
    """OpenAI's transcription stream: `transcript.text.delta` per segment, then `transcript.text.done`."""

    async def events() -> AsyncIterator[dict[str, Any]]:
        texts: list[str] = []
        words: list[Word] = []
        async for segment in stream.segments:
            delta = segment.text if texts else segment.text.lstrip()
            texts.append(delta)
            words.extend(segment.words or [])
            event: dict[str, Any] = {"type": "transcript.text.delta", "delta": delta}
            if include_logprobs:
                event["logprobs"] = logprobs(segment.words or [])
            yield event
        # The done text is exactly the concatenation of the deltas, so clients may use either.
        # No `usage`: the SDK types it as token usage, which Whisper's duration is not.
        done: dict[str, Any] = {"type": "transcript.text.done", "text": "".join(texts)}
        if include_logprobs:
            done["logprobs"] = logprobs(words)
        yield done

    return sse.event_stream(events())


def speech_response(speech: SpeechStream, *, stream_format: str, characters: int) -> StreamingHttpResponse:
    """The audio body streamed, or SSE `speech.audio.delta` events then `speech.audio.done`."""
    if stream_format == "audio":
        return sse.audio_stream(speech.chunks, speech.content_type)

    async def events() -> AsyncIterator[dict[str, Any]]:
        count = 0
        async for data in speech.chunks:
            count += 1
            yield {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
        # OpenAI counts tokens; our engines have none, so input counts characters and output the
        # audio chunks sent (documented in README).
        yield {
            "type": "speech.audio.done",
            "usage": {"input_tokens": characters, "output_tokens": count, "total_tokens": characters + count},
        }

    return sse.event_stream(events())
