"""The voice-chat proxy: input audio -> transcripts -> upstream LLM -> spoken reply.

`prepare()` does all the work that can fail with a plain error (audio-id lookup, transcription,
voice and route resolution, and, for a stream, opening the upstream) before any byte of the
response; `voice_chat()` and `voice_chat_stream()` then produce the completion or its events.
The streamed, spoken reply is chat/spoken_stream.py.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache

from chat import audio_store, upstream
from chat.serializers import AUDIO_OUT_FORMATS, AudioBytes
from chat.spoken_stream import SpokenStream, check_speakable
from registry import audit, catalog
from registry.access import check_model_allowed
from registry.errors import InvalidAudio, InvalidRequest
from registry.models import ApiKey
from registry.resolved import ResolvedModel
from registry.speech import stt, tts, workers
from registry.speech.text import cap_text

T = TypeVar("T")

CONSUMED = ("modalities", "audio", "transcription_model", "speech_model")
TRANSCRIPT_CACHE_SECONDS = 24 * 3600
PARTS_AT_ONCE = 2  # a request's audio parts transcribed at once
# A chunk, an upstream event's text passed through as it came, or an upstream's SSE comment.
Payload = dict[str, Any] | str | upstream.Comment


@dataclass
class ChatPlan:
    owner: str  # whose spoken replies these are (audio_store.owner_of)
    model: str  # as the client named it: what every reply says, whatever the upstream calls it
    body: dict[str, Any]  # what goes upstream
    target: upstream.Target
    voicing: tts.Voicing | None  # None: text out only
    audio_format: str = ""  # the client's name for it ("pcm16", "wav"...)
    stream: bool = False
    include_usage: bool = False
    started: float = field(default_factory=time.perf_counter)
    # A spoken reply's place in the worker pool, taken before any work (see prepare()); released
    # by voice_chat() or when voice_chat_stream()'s reply ends.
    reservation: workers.Reservation | None = None


@dataclass(frozen=True)
class _AudioPart:
    message: int
    part: int
    audio: AudioBytes


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


def _audio_parts(messages: list[dict[str, Any]]) -> list[_AudioPart]:
    return [
        _AudioPart(i, j, part["input_audio"]["data"])
        for i, message in enumerate(messages)
        if isinstance(message.get("content"), list)
        for j, part in enumerate(message["content"])
        if part["type"] == "input_audio"
    ]


async def _transcribe(model: ResolvedModel, api_key: ApiKey | None, parts: list[_AudioPart]) -> list[str]:
    """Each part's transcript, two at a time; resent audio comes from the transcript cache. (Two: a
    request's calls beside its reservation's slot are admitted past the pool's limit, so their
    number must not grow with the number of parts a client sends.)"""
    at_once = asyncio.Semaphore(PARTS_AT_ONCE)

    async def one(part: _AudioPart) -> str:
        async with at_once:
            key = f"voiceproxy:stt:{model.model_id}:{part.audio.digest}"
            cached = await cache.aget(key)
            if cached is not None:
                audit.usage().stt_cache_hits += 1
                return str(cached)
            try:
                result = await stt.run(
                    api_key=api_key,
                    source=part.audio.data,
                    task="transcribe",
                    options=stt.SttOptions(),
                    model=model,
                )
            except InvalidAudio as exc:
                raise InvalidAudio(
                    f"messages[{part.message}].content[{part.part}]: {exc.message}",
                    param=f"messages[{part.message}].content[{part.part}].input_audio.data",
                ) from exc
            await cache.aset(key, result.text, timeout=TRANSCRIPT_CACHE_SECONDS)
            return result.text

    return await _all(one(p) for p in parts)


async def prepare(*, api_key: ApiKey | None, params: dict[str, Any], body: dict[str, Any]) -> ChatPlan:
    """Check what a validated request names and do everything that can still fail with a plain error.

    `params` is what the edge validated (chat/serializers.py), `body` the request as the client sent
    it, which goes upstream with only our own parameters taken out and audio replaced by text.
    """
    await catalog.check_chat_model(params["model"])
    check_model_allowed(api_key, [params["model"]])
    # Routed first: an unknown model or a misconfigured upstream is an answer before any transcription.
    target = await upstream.route(params["model"])
    voicing = None
    if params["wants_audio"]:
        voicing = await tts.voicing(
            api_key=api_key,
            model=params.get("speech_model"),
            voice=params["audio"]["voice"],
            model_param="speech_model",
            voice_param="audio.voice",
        )
    # A spoken reply is admitted now, before any transcription or LLM work (a 503 with
    # Retry-After then costs nothing), and keeps its place until its last sentence: a response
    # that starts can finish. Its transcriptions use the same place.
    reserved = workers.reservation() if voicing is not None else None
    if reserved is not None:
        workers.use(reserved)
    try:
        return await _prepare(api_key, params, body, target, voicing, reserved)
    except BaseException:
        if reserved is not None:
            workers.release(reserved)
        raise


async def _prepare(
    api_key: ApiKey | None,
    params: dict[str, Any],
    body: dict[str, Any],
    target: upstream.Target,
    voicing: tts.Voicing | None,
    reserved: workers.Reservation | None,
) -> ChatPlan:
    messages = copy.deepcopy(body["messages"])
    for i, message in enumerate(params["messages"]):
        audio_ref = message.get("audio")
        if message["role"] != "assistant" or not isinstance(audio_ref, dict):
            continue
        transcript = await audio_store.transcript(audio_ref["id"], owner=audio_store.owner_of(api_key))
        if transcript is None:
            raise InvalidRequest(
                f"The audio id '{audio_ref['id']}' is unknown or has expired.",
                param=f"messages[{i}].audio.id",
                code="invalid_audio_id",
            )
        messages[i].pop("audio", None)
        messages[i]["content"] = transcript
    parts = _audio_parts(params["messages"])
    if parts:
        model = await stt.resolve(
            api_key=api_key, name=params.get("transcription_model"), param="transcription_model"
        )
        # Transcription takes seconds; a TCP connect to the upstream alongside it costs nothing and
        # turns an upstream that is down into a 502 at once, not after the transcription.
        transcribing = asyncio.ensure_future(_transcribe(model, api_key, parts))
        await _all([transcribing, upstream.reachable(target)])  # either failing cancels the other
        for part, text in zip(parts, transcribing.result(), strict=True):
            messages[part.message]["content"][part.part] = {"type": "text", "text": text}
    audit.add_model(params["model"])
    forward = {k: v for k, v in body.items() if k not in CONSUMED}
    forward["messages"] = messages
    stream = bool(params.get("stream"))
    options = params.get("stream_options") or {}
    include_usage = bool(options.get("include_usage"))
    if stream:
        # Asked for the audit log's token counts; the usage chunk reaches the client only if it asked.
        forward["stream_options"] = {**options, "include_usage": True}
    return ChatPlan(
        owner=audio_store.owner_of(api_key),
        model=params["model"],
        body=forward,
        target=target,
        voicing=voicing,
        audio_format=params["audio"]["format"] if voicing is not None else "",
        stream=stream,
        include_usage=include_usage,
        reservation=reserved,
    )


async def voice_chat(plan: ChatPlan) -> dict[str, Any]:
    """Non-streaming: the upstream's completion, each choice's text spoken into `message.audio`."""
    try:
        return await _voice_chat(plan)
    finally:
        if plan.reservation is not None:
            workers.release(plan.reservation)


async def _voice_chat(plan: ChatPlan) -> dict[str, Any]:
    started = time.perf_counter()
    data = await upstream.complete(plan.target, plan.body)
    usage = audit.usage()
    usage.span("llm_ms", started)
    usage.tokens = data.get("usage")
    _as_asked(data, plan.model)
    for choice in data["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and message.get("tool_calls") and message.get("content") == "":
            message["content"] = None  # as OpenAI sends a tool call without text (llama.cpp sends "")
        if plan.voicing is not None and isinstance(message, dict):
            check_speakable(message, plan.target)
    if plan.voicing is not None:
        await _all(
            _speak_choice(plan.voicing, plan.audio_format, choice, plan.owner)
            for choice in data["choices"]
            if isinstance(choice, dict)
        )
    return data


def _as_asked(chunk: dict[str, Any], model: str) -> None:
    """Name the model as the client did: an upstream's own name (llama.cpp's is its model file's
    path) would leak its file system and confuse clients that compare names."""
    if "model" in chunk:
        chunk["model"] = model


async def _speak_choice(voicing: tts.Voicing, audio_format: str, choice: dict[str, Any], owner: str) -> None:
    message = choice.get("message")
    if not isinstance(message, dict):
        return
    text = message.get("content")
    if not isinstance(text, str) or not tts.speakable(text):
        return  # a tool call without text, or nothing speakable: returned as the upstream sent it
    text, capped = cap_text(text, settings.VOICEPROXY_MAX_SPOKEN_CHARS)
    if capped:  # said as a reply cut by max_tokens says it; the audit row says why
        choice["finish_reason"] = "length"
        audit.usage().reply_capped = True
    data = await tts.speak_whole(v=voicing, text=text, response_format=AUDIO_OUT_FORMATS[audio_format])
    audio_id, expires_at = audio_store.new_id(), audio_store.expiry()
    await audio_store.save(audio_id, text, expires_at, owner=owner)
    message["content"] = None
    message["audio"] = {
        "id": audio_id,
        "data": base64.b64encode(data).decode(),
        "expires_at": int(expires_at.timestamp()),
        "transcript": text,
    }


async def voice_chat_stream(plan: ChatPlan) -> AsyncIterator[Payload]:
    """Streaming: opens the upstream stream and waits for its first event now (its errors are still
    plain errors), and returns the events."""
    stack = AsyncExitStack()
    started = time.perf_counter()
    reserved = plan.reservation
    if reserved is not None:
        stack.callback(workers.release, reserved)
    try:
        events = await stack.enter_async_context(upstream.stream(plan.target, plan.body))
    except BaseException:
        await stack.aclose()
        raise
    if plan.voicing is None or reserved is None:
        return _passthrough(events, stack, started, plan.model, plan.include_usage)
    return SpokenStream(
        reservation=reserved,
        owner=plan.owner,
        model=plan.model,
        target=plan.target,
        voicing=plan.voicing,
        include_usage=plan.include_usage,
        events=events,
        stack=stack,
        started=started,
    ).events()


async def _passthrough(
    events: upstream.Events, stack: AsyncExitStack, started: float, model: str, include_usage: bool
) -> AsyncIterator[Payload]:
    """Text out: the upstream's events as it sent them, comments included, but for the model's name,
    its key (should it say it) and the usage. That leaves once, last, and only to a client that
    asked for it: the gateway asks for it anyway (for the audit log), and llama.cpp sends one usage
    chunk per choice when n > 1."""
    usage = audit.usage()
    usages: list[dict[str, Any]] = []
    usage_chunk: dict[str, Any] | None = None
    try:
        async for chunk in events.chunks():  # a malformed event is an UpstreamError (the SDKs'd choke)
            if isinstance(chunk, upstream.Comment):
                yield chunk
                continue
            if usage.llm_first_token_ms is None:
                usage.llm_first_token_ms = (time.perf_counter() - started) * 1000
            _as_asked(chunk, model)
            if isinstance(chunk.get("usage"), dict):
                usages.append(chunk["usage"])
                if not chunk.get("choices"):
                    usage_chunk = chunk  # held back: one usage chunk, added up, ends the reply
                    continue
                if not include_usage:
                    del chunk["usage"]
            yield chunk
        if usage_chunk is not None and include_usage:
            yield {**usage_chunk, "usage": upstream.merged_usage(usages)}
        yield "[DONE]"
    finally:
        usage.span("llm_ms", started)
        usage.tokens = upstream.merged_usage(usages)
        await stack.aclose()
