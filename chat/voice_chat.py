"""The voice-chat proxy: input audio -> transcripts -> upstream LLM -> spoken reply.

`prepare()` validates everything and does all the work that can fail with a plain HTTP error
(transcription, audio-id lookup, routing, opening the upstream stream) before any byte of the
response; `voice_chat()` and `voice_chat_stream()` then produce the body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache

from chat import audio_store, upstream
from registry import audit, catalog
from registry.api.auth import check_model_allowed
from registry.errors import InvalidAudio, InvalidRequest, OpenAIError, as_openai_error, sse_error_event
from registry.models import ApiKey
from registry.speech import stt, tts, workers
from registry.speech.text import SentenceSplitter, SpeakableFilter

T = TypeVar("T")

AUDIO_OUT_FORMATS = {"wav": "wav", "mp3": "mp3", "flac": "flac", "opus": "opus", "pcm16": "pcm", "aac": "aac"}
AUDIO_IN_FORMATS = ("wav", "mp3")
CONSUMED = ("modalities", "audio", "transcription_model", "speech_model")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
SPEECH_PARALLELISM = 2  # sentences synthesised at once per choice: the next is ready when one ends
TRANSCRIPT_CACHE_SECONDS = 24 * 3600


@dataclass
class ChatPlan:
    body: dict[str, Any]  # what goes upstream
    target: upstream.Target
    voicing: tts.Voicing | None  # None: text out only
    audio_format: str = ""  # the client's name for it ("pcm16", "wav"...)
    stream: bool = False
    include_usage: bool = False
    started: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class _AudioPart:
    message: int
    part: int
    data: bytes
    digest: str  # sha256 of data: the transcript cache's key


async def _all(coroutines: Iterable[Awaitable[T]]) -> list[T]:
    """Like gather, but when one fails the others are cancelled (their pool work is not wasted) and
    the first error is raised as itself (a TaskGroup would wrap it in an ExceptionGroup)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _invalid(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _check_messages(messages: Any) -> tuple[list[_AudioPart], list[tuple[int, str]]]:
    """Shapes only: returns the input audio parts and the assistant audio ids to resolve."""
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty array.", "messages")
    parts: list[_AudioPart] = []
    audio_ids: list[tuple[int, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(f"{where} must be an object.", where)
        role = message.get("role")
        if role not in ROLES:
            raise _invalid(f"{where}.role must be one of {', '.join(ROLES)}.", f"{where}.role")
        content = message.get("content")
        if isinstance(message.get("audio"), dict) and role == "assistant":
            audio_id = message["audio"].get("id")
            if not isinstance(audio_id, str) or not audio_id:
                raise _invalid(f"{where}.audio.id must be a string.", f"{where}.audio.id")
            audio_ids.append((i, audio_id))
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise _invalid(f"{where}.content must be a string or an array of parts.", f"{where}.content")
        for j, part in enumerate(content):
            pwhere = f"{where}.content[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _invalid(f"{pwhere} must be an object with a 'type'.", pwhere)
            if part["type"] != "input_audio":
                continue
            if role != "user":
                raise _invalid(f"{pwhere}: input_audio is only allowed in user messages.", pwhere)
            spec = part.get("input_audio")
            if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
                raise _invalid(
                    f"{pwhere}.input_audio must hold base64 'data' and a 'format'.", f"{pwhere}.input_audio"
                )
            if spec.get("format") not in AUDIO_IN_FORMATS:
                raise _invalid(
                    f"{pwhere}.input_audio.format must be one of {', '.join(AUDIO_IN_FORMATS)}.",
                    f"{pwhere}.input_audio.format",
                )
            try:
                data = base64.b64decode(spec["data"], validate=True)
            except (binascii.Error, ValueError):
                raise _invalid(
                    f"{pwhere}.input_audio.data is not valid base64.",
                    f"{pwhere}.input_audio.data",
                    "invalid_audio",
                ) from None
            parts.append(_AudioPart(i, j, data, hashlib.sha256(data).hexdigest()))
    return parts, audio_ids


def _check_parameters(body: dict[str, Any]) -> tuple[bool, str, Any]:
    """(audio out?, the client's audio format, the voice) after checking their pairing."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _invalid("'model' must be a non-empty string.", "model")
    n = body.get("n", 1)
    if n is not None and (
        not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= settings.VOICEPROXY_MAX_CHOICES
    ):
        raise _invalid(f"'n' must be an integer from 1 to {settings.VOICEPROXY_MAX_CHOICES}.", "n")
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise _invalid("'stream' must be a boolean.", "stream")
    modalities = body.get("modalities") or ["text"]
    if (
        not isinstance(modalities, list)
        or not modalities
        or not all(isinstance(m, str) for m in modalities)
        or not set(modalities) <= {"text", "audio"}
    ):
        raise _invalid("'modalities' must be a list of 'text' and 'audio'.", "modalities")
    wants_audio = "audio" in modalities
    audio_param = body.get("audio")
    if not wants_audio:
        if audio_param is not None:
            raise _invalid("'audio' needs 'audio' in 'modalities'.", "audio")
        return False, "", None
    if not isinstance(audio_param, dict):
        raise _invalid("'modalities' with 'audio' needs the 'audio' parameter: {voice, format}.", "audio")
    fmt = audio_param.get("format")
    if not isinstance(fmt, str) or fmt not in AUDIO_OUT_FORMATS:
        raise _invalid(f"'audio.format' must be one of {', '.join(AUDIO_OUT_FORMATS)}.", "audio.format")
    if body.get("stream") and fmt != "pcm16":
        raise _invalid("Streamed audio is sent as 'pcm16'; set 'audio.format' to 'pcm16'.", "audio.format")
    voice = audio_param.get("voice")
    if isinstance(voice, dict):
        voice = voice.get("id")
    if not isinstance(voice, str) or not voice:
        raise _invalid("'audio.voice' must be a voice name or {\"id\": ...}.", "audio.voice")
    return True, fmt, voice


async def _transcribe(api_key: ApiKey | None, body: dict[str, Any], parts: list[_AudioPart]) -> list[str]:
    """Each part's transcript, concurrently; resent audio comes from the transcript cache."""
    name = body.get("transcription_model")
    if name is not None and not isinstance(name, str):
        raise _invalid("'transcription_model' must be a string.", "transcription_model")
    model = await catalog.model_for(task="stt", api_key=api_key, name=name, param="transcription_model")

    async def one(part: _AudioPart) -> str:
        key = f"voiceproxy:stt:{model.model_id}:{part.digest}"
        cached = await cache.aget(key)
        if cached is not None:
            audit.count("stt_cache_hits")
            return str(cached)
        try:
            result = await stt.run(
                api_key=api_key,
                data=part.data,
                task="transcribe",
                options=stt.SttOptions(model=model.model_id),
            )
        except InvalidAudio as exc:
            raise InvalidAudio(
                f"messages[{part.message}].content[{part.part}]: {exc.message}",
                param=f"messages[{part.message}].content[{part.part}].input_audio.data",
            ) from exc
        await cache.aset(key, result.text, timeout=TRANSCRIPT_CACHE_SECONDS)
        return result.text

    return await _all(one(p) for p in parts)


async def prepare(*, api_key: ApiKey | None, body: Any) -> ChatPlan:
    """Validate the request and do everything that can still fail with a plain HTTP error."""
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.", "body", "invalid_body")
    wants_audio, fmt, voice = _check_parameters(body)
    # Decoding and hashing megabytes of base64 audio is CPU work: off the event loop.
    parts, audio_ids = await sync_to_async(_check_messages, thread_sensitive=False)(body.get("messages"))
    check_model_allowed(api_key, [body["model"]])
    voicing = None
    if wants_audio:
        speech_model = body.get("speech_model")
        if speech_model is not None and not isinstance(speech_model, str):
            raise _invalid("'speech_model' must be a string.", "speech_model")
        voicing = await tts.voicing(
            api_key=api_key,
            model=speech_model,
            voice=voice,
            model_param="speech_model",
            voice_param="audio.voice",
        )
    messages = copy.deepcopy(body["messages"])
    for i, audio_id in audio_ids:
        transcript = await audio_store.transcript(audio_id)
        if transcript is None:
            raise _invalid(
                f"The audio id '{audio_id}' is unknown or has expired.",
                f"messages[{i}].audio.id",
                "invalid_audio_id",
            )
        messages[i].pop("audio", None)
        messages[i]["content"] = transcript
    if parts:
        for part, text in zip(parts, await _transcribe(api_key, body, parts), strict=True):
            messages[part.message]["content"][part.part] = {"type": "text", "text": text}
    target = await upstream.route(body["model"])
    audit.add_model(body["model"])
    forward = {k: v for k, v in body.items() if k not in CONSUMED}
    forward["messages"] = messages
    stream = bool(body.get("stream"))
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    include_usage = bool(options.get("include_usage"))
    if stream and voicing is not None:
        # Asked for the audit log's token counts; the usage chunk reaches the client only if it asked.
        forward["stream_options"] = {**options, "include_usage": True}
    return ChatPlan(
        body=forward,
        target=target,
        voicing=voicing,
        audio_format=fmt,
        stream=stream,
        include_usage=include_usage,
    )


async def voice_chat(plan: ChatPlan) -> dict[str, Any]:
    """Non-streaming: the upstream's completion, each choice's text spoken into `message.audio`."""
    started = time.perf_counter()
    data = await upstream.complete(plan.target, plan.body)
    audit.note(llm_ms=(time.perf_counter() - started) * 1000, usage=data.get("usage"))
    if plan.voicing is not None:
        await _all(_speak_choice(plan, choice) for choice in data["choices"] if isinstance(choice, dict))
    return data


async def _speak_choice(plan: ChatPlan, choice: dict[str, Any]) -> None:
    message = choice.get("message")
    if not isinstance(message, dict):
        return
    text = message.get("content")
    if not isinstance(text, str) or not tts.speakable(text):
        return  # a tool call without text, or nothing speakable: returned as the upstream sent it
    assert plan.voicing is not None  # noqa: S101 - only called when audio is wanted
    data = await tts.speak_whole(
        v=plan.voicing, text=text, response_format=AUDIO_OUT_FORMATS[plan.audio_format]
    )
    audio_id, expires_at = audio_store.new_id(), audio_store.expiry()
    await audio_store.save(audio_id, text, expires_at)
    message["content"] = None
    message["audio"] = {
        "id": audio_id,
        "data": base64.b64encode(data).decode(),
        "expires_at": int(expires_at.timestamp()),
        "transcript": text,
    }


def _sse(payload: dict[str, Any] | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


async def voice_chat_stream(plan: ChatPlan) -> AsyncIterator[bytes]:
    """Streaming: opens the upstream stream now (its errors are plain HTTP errors) and returns the body."""
    stack = AsyncExitStack()
    started = time.perf_counter()
    try:
        events = await stack.enter_async_context(upstream.stream(plan.target, plan.body))
    except BaseException:
        await stack.aclose()
        raise
    if plan.voicing is None:
        return _passthrough(events, stack, started)
    return _SpokenStream(plan, events, stack, started).body()


async def _passthrough(
    events: upstream.Events, stack: AsyncExitStack, started: float
) -> AsyncIterator[bytes]:
    """Text out: the upstream's events, unchanged."""
    first = True
    try:
        async for payload in events.lines():
            if first:
                audit.note(llm_first_token_ms=(time.perf_counter() - started) * 1000)
                first = False
            yield _sse(payload)
        yield _sse("[DONE]")
    except OpenAIError as exc:
        audit.note(stream_error=exc)
        yield sse_error_event(exc)
    finally:
        audit.note(llm_ms=(time.perf_counter() - started) * 1000)
        await stack.aclose()


class _ChoiceVoice:
    """Speaks one choice while its text streams: sentences synthesised with bounded parallelism
    and emitted in order, each engine chunk forwarded as it comes."""

    def __init__(self, stream: _SpokenStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.audio_id = audio_store.new_id()
        self.splitter = SentenceSplitter()
        self.speakable = SpeakableFilter()
        self.transcript: list[str] = []
        self.order: asyncio.Queue[asyncio.Queue[Any] | None] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self.emitter = asyncio.create_task(self._emit())

    def text(self, piece: str) -> None:
        self.transcript.append(piece)
        for sentence in self.splitter.feed(piece):
            self._start(sentence)

    def _start(self, sentence: str) -> None:
        spoken = self.speakable(sentence)
        if spoken is None:
            return
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        self.order.put_nowait(chunks)
        self.tasks.append(asyncio.create_task(self._synthesize(spoken, chunks)))

    async def _synthesize(self, sentence: str, chunks: asyncio.Queue[Any]) -> None:
        async with self.stream.speech_slots:
            totals = {"seconds": 0.0}
            started = time.perf_counter()
            items = None
            try:
                items = workers.stream(tts.encoded, self.stream.plan.voicing, [sentence], "pcm", totals)
                async for data in items:
                    chunks.put_nowait(data)
            except Exception as exc:  # handed to the emitter, which raises it in order
                chunks.put_nowait(exc)
            finally:
                if items is not None:
                    items.close()
                chunks.put_nowait(None)
                audit.add_time("tts_ms", (time.perf_counter() - started) * 1000)
                audit.add_time("audio_seconds_out", totals["seconds"])

    async def _emit(self) -> None:
        while (chunks := await self.order.get()) is not None:
            while (item := await chunks.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                self.stream.first_audio()
                await self.stream.put(
                    self.stream.chunk(self.index, {"audio": {"id": self.audio_id, "data": _b64(item)}})
                )

    async def finish(self) -> None:
        """Speak what is left, wait until every audio delta is out, then send the closing audio delta."""
        for sentence in self.splitter.flush():
            self._start(sentence)
        self.order.put_nowait(None)
        await self.emitter
        text = "".join(self.transcript)
        if not text:
            return
        expires_at = audio_store.expiry()
        await audio_store.save(self.audio_id, text, expires_at)
        await self.stream.put(
            self.stream.chunk(
                self.index, {"audio": {"id": self.audio_id, "expires_at": int(expires_at.timestamp())}}
            )
        )

    def cancel(self) -> None:
        self.emitter.cancel()
        for task in self.tasks:
            task.cancel()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class _SpokenStream:
    """Audio out, streamed: transcript deltas as the text arrives, pcm16 deltas as sentences are spoken."""

    def __init__(
        self, plan: ChatPlan, events: upstream.Events, stack: AsyncExitStack, started: float
    ) -> None:
        self.plan = plan
        self.events = events
        self.stack = stack
        self.started = started
        self.out: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.voices: dict[int, _ChoiceVoice] = {}
        self.speech_slots = asyncio.Semaphore(SPEECH_PARALLELISM)
        self.template: dict[str, Any] = {"object": "chat.completion.chunk"}
        self._first_audio = False

    def chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            **self.template,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
        }

    async def put(self, chunk: dict[str, Any]) -> None:
        await self.out.put(_sse(chunk))

    def first_audio(self) -> None:
        if not self._first_audio:
            self._first_audio = True
            audit.note(tts_first_audio_ms=(time.perf_counter() - self.started) * 1000)

    def voice(self, index: int) -> _ChoiceVoice:
        if index not in self.voices:
            self.voices[index] = _ChoiceVoice(self, index)
        return self.voices[index]

    async def read(self) -> None:
        finishes: dict[int, dict[str, Any]] = {}
        usage_chunk: dict[str, Any] | None = None
        first = True
        try:
            async for chunk in self.events.chunks():
                if first:
                    audit.note(llm_first_token_ms=(time.perf_counter() - self.started) * 1000)
                    first = False
                self.template = {
                    k: chunk[k]
                    for k in ("id", "object", "created", "model", "system_fingerprint")
                    if k in chunk
                }
                choices = chunk.get("choices") or []
                if not choices:
                    if chunk.get("usage") is not None:
                        usage_chunk = chunk
                    continue
                for choice in choices:
                    index = int(choice.get("index", 0))
                    delta = dict(choice.get("delta") or {})
                    content = delta.pop("content", None)
                    voice = self.voice(index)
                    if delta:  # role, tool_calls, refusal: passed through as sent
                        await self.put(self.chunk(index, delta))
                    if content:
                        voice.text(content)
                        await self.put(
                            self.chunk(index, {"audio": {"id": voice.audio_id, "transcript": content}})
                        )
                    if choice.get("finish_reason"):
                        finishes[index] = self.chunk(index, {}, choice["finish_reason"])
            audit.note(llm_ms=(time.perf_counter() - self.started) * 1000)
            # No audio after the chunk that carries finish_reason: each choice's audio ends first.
            for index, voice in sorted(self.voices.items()):
                await voice.finish()
                if index in finishes:
                    await self.put(finishes[index])
            if usage_chunk is not None:
                audit.note(usage=usage_chunk.get("usage"))
                if self.plan.include_usage:
                    await self.put(usage_chunk)
            await self.out.put(_sse("[DONE]"))
        except BaseException as exc:
            await self.out.put(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            await self.out.put(None)

    async def body(self) -> AsyncIterator[bytes]:
        reader = asyncio.create_task(self.read())
        try:
            while (item := await self.out.get()) is not None:
                if isinstance(item, BaseException):
                    if isinstance(item, asyncio.CancelledError):
                        return
                    audit.note(stream_error=as_openai_error(item))
                    yield sse_error_event(item)
                    return
                yield item
        finally:
            # The client went away, or the stream ended: stop reading the upstream and speaking.
            reader.cancel()
            for voice in self.voices.values():
                voice.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self.stack.aclose()
