"""A streamed voice-chat reply: the upstream's chunks re-shaped as OpenAI's audio deltas.

Transcript deltas leave as the text arrives; each choice's text is also fed to
`tts.speak_stream()` (the one streamed-speech component), whose pcm16 chunks leave as
`delta.audio.data` in order. Role, tool calls and refusals pass through as sent. A choice's audio
ends before the chunk that carries its `finish_reason`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from django.conf import settings

from chat import audio_store, upstream
from registry import audit
from registry.errors import OpenAIError, UpstreamError
from registry.speech import tts, workers
from registry.speech.text import SpokenCap

SPEECH_PARALLELISM = 2  # sentences synthesised at once per choice: the next is ready when one ends
Payload = dict[str, Any] | str | upstream.Comment


def check_speakable(message: dict[str, Any], target: upstream.Target) -> None:
    """A voice reply must have something to say, or say why not.

    A reasoning model that spent its tokens thinking answers with `reasoning_content` and an empty
    `content`: rather than a silent 200 without audio, that is a 502 naming the cause. (A tool
    call without text is a normal reply: no audio, no error.)
    """
    content = message.get("content")
    if message.get("tool_calls") or (isinstance(content, str) and tts.speakable(content)):
        return
    if message.get("reasoning_content"):
        raise UpstreamError(
            f"The upstream '{target.name}' answered only with reasoning_content and no content to speak; "
            "give it more max_tokens, or turn its reasoning off.",
            code="no_content_to_speak",
        )


class _ChoiceVoice:
    """Speaks one choice while its text streams, through tts.speak_stream()."""

    def __init__(self, reply: SpokenStream, index: int) -> None:
        self.reply = reply
        self.index = index
        self.audio_id = audio_store.new_id()
        self.transcript: list[str] = []
        self.spoken: list[str] = []  # the sentences handed to speech
        self.cap = SpokenCap(settings.VOICEPROXY_MAX_SPOKEN_CHARS)
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self.emitter = asyncio.create_task(self._emit())

    def text(self, piece: str) -> str:
        """Take the next piece of the reply; returns the part of it within the spoken cap."""
        piece = self.cap.take(piece)
        self.transcript.append(piece)
        self._speak(self.cap.sentences)
        return piece

    def _speak(self, sentences: list[str]) -> None:
        for sentence in sentences:
            self.pieces.put_nowait(sentence)
        self.spoken += sentences
        sentences.clear()

    async def _text(self) -> AsyncIterator[str]:
        while (piece := await self.pieces.get()) is not None:
            yield piece

    async def _emit(self) -> None:
        chunks = tts.speak_stream(
            v=self.reply.voicing,
            text=self._text(),
            response_format="pcm",
            parallelism=SPEECH_PARALLELISM,
            sentences=True,  # split by the cap as the text came
        )
        try:
            async for data in chunks:
                await self.reply.put(
                    self.reply.chunk(self.index, {"audio": {"id": self.audio_id, "data": _b64(data)}})
                )
        finally:
            await chunks.aclose()

    async def finish(self) -> None:
        """Speak what is left, wait until every audio delta is out, then send the closing audio delta."""
        self._speak(self.cap.rest())
        self.pieces.put_nowait(None)
        await self.emitter
        text = "".join(self.transcript)
        if not text:
            return
        if self.cap.capped:  # what a later turn says the assistant said: what was heard
            text = " ".join(self.spoken)
        expires_at = audio_store.expiry()
        await audio_store.save(self.audio_id, text, expires_at, owner=self.reply.owner)
        await self.reply.put(
            self.reply.chunk(
                self.index, {"audio": {"id": self.audio_id, "expires_at": int(expires_at.timestamp())}}
            )
        )

    def cancel(self) -> None:
        self.emitter.cancel()


def _capped_note(limit: int) -> str:
    return (
        f"voiceproxy: the spoken reply reached its cap of {limit} characters "
        "(VOICEPROXY_MAX_SPOKEN_CHARS); it ends at the last whole sentence within it"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class SpokenStream:
    """Audio out, streamed: transcript deltas as the text arrives, pcm16 deltas as sentences are spoken."""

    def __init__(
        self,
        *,
        reservation: workers.Reservation,
        owner: str,
        model: str,
        target: upstream.Target,
        voicing: tts.Voicing,
        include_usage: bool,
        events: upstream.Events,
        stack: AsyncExitStack,
        started: float,
    ) -> None:
        self.reservation = reservation
        self.owner = owner
        self.model = model
        self.target = target
        self.voicing = voicing
        self.include_usage = include_usage
        self.upstream_events = events
        self.stack = stack
        self.started = started
        self.out: asyncio.Queue[Payload | BaseException | None] = asyncio.Queue()
        self.voices: dict[int, _ChoiceVoice] = {}
        self.template: dict[str, Any] = {"object": "chat.completion.chunk", "model": model}
        self.reasoned: set[int] = set()  # choices that sent reasoning_content
        self.called: set[int] = set()  # choices that sent tool calls

    def chunk(
        self, index: int, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        return {
            **self.template,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, **extra}],
        }

    async def put(self, chunk: dict[str, Any] | upstream.Comment) -> None:
        await self.out.put(chunk)

    def voice(self, index: int) -> _ChoiceVoice:
        if index not in self.voices:
            self.voices[index] = _ChoiceVoice(self, index)
        return self.voices[index]

    async def read(self) -> None:
        finishes: dict[int, dict[str, Any]] = {}
        usages: list[dict[str, Any]] = []
        usage = audit.usage()
        try:
            try:
                async for chunk in self.upstream_events.chunks():
                    if isinstance(chunk, upstream.Comment):
                        await self.put(chunk)  # keep-alives while the upstream thinks
                        continue
                    if usage.llm_first_token_ms is None:
                        usage.llm_first_token_ms = (time.perf_counter() - self.started) * 1000
                    await self._read_chunk(chunk, finishes, usages)
                    if self.voices and all(voice.cap.capped for voice in self.voices.values()):
                        break  # every reply reached the spoken cap: the upstream's rest is not read
            except OpenAIError:
                # The upstream broke off: speak what the client has already read, then the error.
                for voice in self.voices.values():
                    await voice.finish()
                raise
            usage.span("llm_ms", self.started)
            for index in sorted(self.voices.keys() | finishes.keys()):
                if not self.voice(index).transcript and index in self.reasoned and index not in self.called:
                    check_speakable({"reasoning_content": True}, self.target)
            # No audio after the chunk that carries finish_reason: each choice's audio ends first.
            for index, voice in sorted(self.voices.items()):
                await voice.finish()
                if voice.cap.capped:
                    usage.reply_capped = True
                    await self.put(upstream.Comment(_capped_note(voice.cap.limit)))
                    finishes[index] = self.chunk(index, {}, "length")
                if index in finishes:
                    await self.put(finishes[index])
            merged = upstream.merged_usage(usages)
            if merged is not None:
                usage.tokens = merged
                if self.include_usage:
                    await self.put({**self.template, "choices": [], "usage": merged})
            await self.out.put("[DONE]")
        except BaseException as exc:
            await self.out.put(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            await self.out.put(None)

    async def _read_chunk(
        self, chunk: dict[str, Any], finishes: dict[int, dict[str, Any]], usages: list[dict[str, Any]]
    ) -> None:
        self.template = {
            **{k: chunk[k] for k in ("id", "object", "created", "system_fingerprint") if k in chunk},
            "model": self.model,
        }
        if isinstance(chunk.get("usage"), dict):
            usages.append(chunk["usage"])  # llama.cpp sends one per choice
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            delta = dict(choice.get("delta") or {})
            content = delta.pop("content", None)
            voice = self.voice(index)
            if delta.get("reasoning_content"):
                self.reasoned.add(index)
            if delta.get("tool_calls"):
                self.called.add(index)
            if delta:  # role, tool_calls, refusal, reasoning: passed through as sent
                await self.put(self.chunk(index, delta))
            if content:
                content = voice.text(content)
            if content:
                extra = {"logprobs": choice["logprobs"]} if choice.get("logprobs") is not None else {}
                await self.put(
                    self.chunk(index, {"audio": {"id": voice.audio_id, "transcript": content}}, **extra)
                )
            if choice.get("finish_reason"):
                finishes[index] = self.chunk(index, {}, choice["finish_reason"])

    async def events(self) -> AsyncIterator[Payload]:
        """The reply's events; an error (the upstream's or speech's) is raised after what came before it."""
        workers.use(self.reservation)  # here, where the body is produced: its tasks inherit it
        reader = asyncio.create_task(self.read())
        try:
            while (item := await self.out.get()) is not None:
                if isinstance(item, asyncio.CancelledError):
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # The client went away, or the stream ended: stop reading the upstream and speaking.
            reader.cancel()
            for voice in self.voices.values():
                voice.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self.stack.aclose()
