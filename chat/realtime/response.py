"""One Realtime response: the upstream's stream as output items, spoken while it is written.

`Response.run()` opens the upstream stream (chat/upstream.py) and turns its chunks into items:
text becomes an assistant message whose transcript deltas leave as they arrive and whose sentences
are spoken by `tts.speak_stream()` (the one streamed-speech component) into audio deltas in the
session's output format; tool calls become `function_call` items. With tools on offer, text that
looks like the start of a tool call (`{`, `<tool_call>`...) is held until it is known to be text,
so a tool call written as text is never spoken. `cancel(reason)` stops the upstream request and the
speech at once; the response then ends `cancelled`. Each response is one audit row.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from chat import upstream
from chat.realtime.config import AudioFormat, render_format
from chat.realtime.conversation import Item, function_call_arguments, new_id
from chat.realtime.events import error_event
from registry import audit
from registry.errors import OpenAIError
from registry.speech import audio, tts, workers
from registry.speech.text import SentenceSplitter

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
SPEECH_PARALLELISM = 2  # sentences synthesised at once: the next is ready when one ends
FIRST_PIECE_CHARS = 80
PIECE_CHARS = 200  # SentenceSplitter's default, as HTTP voice chat speaks
_TOOLISH = re.compile(r"^\s*(\{|\[|<tool_call>|<\|?tool|```|\[TOOL_CALLS\])")
_TOOL_TAGS = re.compile(r"</?tool_call>|```(?:json)?|\[TOOL_CALLS\]")


@dataclass
class ResponsePlan:
    id: str
    session_id: str
    api_key_id: int | None
    key_prefix: str
    model: str
    target: upstream.Target
    messages: Callable[
        [], Awaitable[list[dict[str, Any]]]
    ]  # awaited inside the response: transcripts may be pending
    body: dict[str, Any]  # what goes upstream beside the messages
    modalities: list[str]
    voicing: tts.Voicing | None
    voice_name: str | None
    output_format: AudioFormat
    into_conversation: bool
    tool_names: set[str] = field(default_factory=set)
    metadata: dict[str, Any] | None = None
    stt_ms: float | None = None  # the turn's transcription after speech stopped, for the audit row


class OutputAudio:
    """pcm16 at 24 kHz -> the session's output format (G.711: resampled to 8 kHz, encoded in the pool)."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self._resampler = audio.Resampler(audio.OPENAI_PCM_RATE, audio.G711_RATE) if fmt != "pcm" else None

    def _convert(self, data: bytes) -> bytes:
        assert self._resampler is not None  # noqa: S101 - only G.711 converts
        return audio.g711_encode(self._resampler.push(audio.from_s16le(data)), self.fmt)

    async def convert(self, data: bytes) -> bytes:
        if self._resampler is None:
            return data
        return await workers.run(self._convert, data)

    def _rest(self) -> bytes:
        assert self._resampler is not None  # noqa: S101 - only G.711 converts
        return audio.g711_encode(self._resampler.flush(), self.fmt)

    async def rest(self) -> bytes:
        """What the resampler still holds once the speech has ended (G.711 only; a few ms)."""
        if self._resampler is None:
            return b""
        return await workers.run(self._rest)


class _Message:
    """The assistant message being written (and spoken) in this response."""

    def __init__(self, response: Response, output_index: int) -> None:
        self.response = response
        self.output_index = output_index
        self.audio = "audio" in response.plan.modalities
        part_type = "output_audio" if self.audio else "output_text"
        self.item = Item(
            {
                "id": new_id("item"),
                "object": "realtime.item",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [
                    {"type": part_type, "transcript": ""} if self.audio else {"type": part_type, "text": ""}
                ],
            }
        )
        self.text = ""
        # The first piece is cut at a clause when its sentence runs long: it is what the user waits for.
        self.splitter = SentenceSplitter(max_chars=FIRST_PIECE_CHARS)
        self.sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self.offset = 0  # characters of `text` accounted for by spoken sentences
        self.spoken_ms = 0.0
        self.speaker: asyncio.Task[None] | None = None

    def ids(self) -> dict[str, Any]:
        return {
            "response_id": self.response.plan.id,
            "item_id": self.item.id,
            "output_index": self.output_index,
            "content_index": 0,
        }

    async def open(self) -> None:
        await self.response.add_item(self.item, self.output_index)
        part = {"type": "audio", "transcript": ""} if self.audio else {"type": "text", "text": ""}
        await self.response.send({"type": "response.content_part.added", **self.ids(), "part": part})
        if self.audio and self.response.plan.voicing is not None:
            self.speaker = asyncio.create_task(self._speak())

    async def write(self, delta: str) -> None:
        self.text += delta
        kind = "response.output_audio_transcript.delta" if self.audio else "response.output_text.delta"
        await self.response.send({"type": kind, **self.ids(), "delta": delta})
        if self.speaker is not None:
            for sentence in self.splitter.feed(delta):
                self.sentences.put_nowait(sentence)
                self.splitter.max_chars = PIECE_CHARS

    async def _text(self) -> AsyncIterator[str]:
        while (sentence := await self.sentences.get()) is not None:
            yield sentence

    def _spoken(self, sentence: str, samples: int) -> None:
        found = self.text.find(sentence.strip(), self.offset)
        if found >= 0:
            self.offset = found + len(sentence.strip())
        self.item.marks.append((self.offset, self.spoken_ms))

    async def _speak(self) -> None:
        voicing = self.response.plan.voicing
        assert voicing is not None  # noqa: S101 - only a spoken message speaks
        out = OutputAudio(self.response.plan.output_format)
        chunks = tts.speak_stream(
            v=voicing,
            text=self._text(),
            response_format="pcm",
            parallelism=SPEECH_PARALLELISM,
            sentences=True,
            on_spoken=self._spoken,
        )
        try:
            async for data in chunks:
                self.spoken_ms += len(data) / 2 / audio.OPENAI_PCM_RATE * 1000
                self.item.audio_ms = self.spoken_ms
                await self._send_audio(await out.convert(data))
            await self._send_audio(await out.rest())
        finally:
            await chunks.aclose()

    async def _send_audio(self, encoded: bytes) -> None:
        if encoded:
            await self.response.send(
                {
                    "type": "response.output_audio.delta",
                    **self.ids(),
                    "delta": base64.b64encode(encoded).decode(),
                }
            )

    async def finish(self) -> None:
        """Speak the rest and wait for its last audio delta."""
        if self.speaker is not None:
            for sentence in self.splitter.flush():
                self.sentences.put_nowait(sentence)
            self.sentences.put_nowait(None)
            await self.speaker

    def stop(self) -> None:
        if self.speaker is not None:
            self.speaker.cancel()

    async def close(self, status: str) -> None:
        """The closing events: the part, then the item, as `status` (completed or incomplete)."""
        if self.speaker is not None:
            await asyncio.gather(self.speaker, return_exceptions=True)
        part = self.item.data["content"][0]
        if self.audio:
            if status == "completed":
                part["transcript"] = self.text
            else:  # cut short: what was spoken (whole sentences), not what was written
                part["transcript"] = self.text[: self.item.marks[-1][0]].strip() if self.item.marks else ""
            await self.response.send({"type": "response.output_audio.done", **self.ids()})
            await self.response.send(
                {
                    "type": "response.output_audio_transcript.done",
                    **self.ids(),
                    "transcript": part["transcript"],
                }
            )
            done_part: dict[str, Any] = {"type": "audio", "transcript": part["transcript"]}
        else:
            part["text"] = self.text
            await self.response.send({"type": "response.output_text.done", **self.ids(), "text": self.text})
            done_part = {"type": "text", "text": self.text}
        await self.response.send({"type": "response.content_part.done", **self.ids(), "part": done_part})
        await self.response.close_item(self.item, self.output_index, status)


class _Call:
    """A function call the upstream is making, its arguments streamed."""

    def __init__(self, response: Response, output_index: int, call_id: str, name: str) -> None:
        self.response = response
        self.output_index = output_index
        self.item = Item(
            {
                "id": new_id("item"),
                "object": "realtime.item",
                "type": "function_call",
                "status": "in_progress",
                "name": name,
                "call_id": call_id,
                "arguments": "",
            }
        )

    def ids(self) -> dict[str, Any]:
        return {
            "response_id": self.response.plan.id,
            "item_id": self.item.id,
            "output_index": self.output_index,
            "call_id": self.item.data["call_id"],
        }

    async def write(self, delta: str) -> None:
        self.item.data["arguments"] += delta
        await self.response.send(
            {"type": "response.function_call_arguments.delta", **self.ids(), "delta": delta}
        )

    async def close(self, status: str) -> None:
        data = self.item.data
        data["arguments"] = function_call_arguments(data["arguments"])
        await self.response.send(
            {
                "type": "response.function_call_arguments.done",
                **self.ids(),
                "name": data["name"],
                "arguments": data["arguments"],
            }
        )
        await self.response.close_item(self.item, self.output_index, status)


# An upstream's finish_reason that means the answer was cut short -> Realtime's incomplete reason.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _usage(tokens: dict[str, Any] | None) -> dict[str, Any] | None:
    if not tokens:
        return None
    prompt, completion = int(tokens.get("prompt_tokens") or 0), int(tokens.get("completion_tokens") or 0)
    return {
        "total_tokens": int(tokens.get("total_tokens") or prompt + completion),
        "input_tokens": prompt,
        "output_tokens": completion,
        "input_token_details": {"text_tokens": prompt, "audio_tokens": 0, "cached_tokens": 0},
        "output_token_details": {"text_tokens": completion, "audio_tokens": 0},
    }


class Response:
    def __init__(
        self,
        plan: ResponsePlan,
        *,
        send: Send,
        conversation_add: Callable[[Item], str | None],
        previous_id: Callable[[str], str | None],
    ) -> None:
        self.plan = plan
        self._send = send
        self._conversation_add = conversation_add
        self._previous_id = previous_id
        self.finish_reason: str | None = None  # the upstream's, for the one choice
        self.output: list[dict[str, Any]] = []
        self.message: _Message | None = None
        self.calls: dict[int, _Call] = {}
        self.held = ""  # text held while it may be a tool call
        self.cancel_reason = "client_cancelled"
        self.cancelling = False
        self.tokens: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed: list[Item] = []

    async def send(self, event: dict[str, Any]) -> None:
        await self._send(event)

    def render(self, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        v = self.plan
        return {
            "id": v.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": self.output,
            "conversation_id": "conv_" + v.session_id.removeprefix("sess_") if v.into_conversation else None,
            "output_modalities": v.modalities,
            "max_output_tokens": v.body.get("max_tokens", "inf"),
            "audio": {"output": {"format": render_format(v.output_format), "voice": v.voice_name}},
            "usage": _usage(self.tokens),
            "metadata": v.metadata,
        }

    async def add_item(self, item: Item, output_index: int) -> None:
        self.output.append(item.data)
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": self.plan.id,
                "output_index": output_index,
                "item": item.data,
            }
        )
        if self.plan.into_conversation:
            previous = self._conversation_add(item)
            await self.send(
                {"type": "conversation.item.added", "previous_item_id": previous, "item": item.data}
            )

    async def close_item(self, item: Item, output_index: int, status: str) -> None:
        item.data["status"] = status
        self.closed.append(item)
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": self.plan.id,
                "output_index": output_index,
                "item": item.data,
            }
        )
        if self.plan.into_conversation:
            previous = self._previous_id(item.id)
            await self.send(
                {"type": "conversation.item.done", "previous_item_id": previous, "item": item.data}
            )

    def cancel(self, reason: str) -> None:
        """Stop now: the upstream request is closed and speech stops before its next chunk. Once:
        a second Task.cancel() would land inside the first one's cleanup (closing the upstream)."""
        if self.task is None or self.task.done() or self.cancelling:
            return
        self.cancelling = True
        self.cancel_reason = reason
        self.task.cancel()

    async def run(self) -> None:
        plan = self.plan
        with audit.scope(method="WS", endpoint="/v1/realtime/response") as record:
            record.api_key_id, record.key_prefix = plan.api_key_id, plan.key_prefix
            record.usage.session_id = plan.session_id
            record.usage.streamed = True
            record.usage.stt_ms = plan.stt_ms
            record.add_model(plan.model)
            if plan.voicing is not None:
                record.add_model(plan.voicing.model.model_id)
            await self.send({"type": "response.created", "response": self.render("in_progress")})
            status = "completed"
            details: dict[str, Any] | None = None
            try:
                await self._stream(record)
                reason = INCOMPLETE.get(self.finish_reason or "")
                if reason is not None:  # cut short by the token limit or a filter: not a whole answer
                    status, details = "incomplete", {"type": "incomplete", "reason": reason}
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                if self.cancel_reason == "closed":  # the socket is gone: nothing to tell anyone
                    self._stop()
                    record.usage.client_disconnected = True
                    record.finish(audit.CLIENT_CLOSED)
                    raise
                status, details = "cancelled", {"type": "cancelled", "reason": self.cancel_reason}
                record.usage.client_disconnected = True
                self._stop()
            except Exception as exc:
                error = record.fail(exc)
                if not isinstance(exc, OpenAIError):
                    logger.exception("realtime response %s failed", plan.id)
                status = "failed"
                details = {
                    "type": "failed",
                    "error": {"type": error.type, "code": str(error.code or ""), "message": error.message},
                }
                self._stop()
                await self.send(error_event(error))
            record.usage.tokens = self.tokens
            item_status = "completed" if status == "completed" else "incomplete"
            await self._close_open(item_status)
            await self.send({"type": "response.done", "response": self.render(status, details)})
            if status == "cancelled":
                record.finish(audit.CLIENT_CLOSED)

    def _stop(self) -> None:
        if self.message is not None:
            self.message.stop()

    async def _stream(self, record: audit.AuditRecord) -> None:
        plan = self.plan
        body = {
            **plan.body,
            "messages": await plan.messages(),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        usages: list[dict[str, Any]] = []
        try:
            async with upstream.stream(plan.target, body) as events:
                async for chunk in events.chunks():
                    if isinstance(chunk, upstream.Comment):
                        continue
                    record.mark_first("llm_first_token_ms")
                    if isinstance(chunk.get("usage"), dict):
                        usages.append(chunk["usage"])
                    for choice in chunk.get("choices") or []:
                        if int(choice.get("index") or 0) == 0:  # a Realtime response has one
                            await self._delta(choice.get("delta") or {})
                            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        finally:
            record.usage.span("llm_ms", started)
            self.tokens = upstream.merged_usage(usages)
        if self.held:
            await self._settle_held()
        if self.message is not None and not self._done(self.message.item):
            await self.message.finish()

    def _done(self, item: Item) -> bool:
        return any(closed is item for closed in self.closed)

    async def _close_open(self, status: str, before: int | None = None) -> None:
        """Close the items still open (those before output index `before`, when given), the message
        first, then the calls in order."""
        items: list[_Message | _Call] = [self.message] if self.message is not None else []
        for open_item in [*items, *(self.calls[index] for index in sorted(self.calls))]:
            if (before is None or open_item.output_index < before) and not self._done(open_item.item):
                await open_item.close(status)

    async def _close_before(self, output_index: int) -> None:
        """Close the items before a new one, as OpenAI gives them: a message (spoken to its end)
        is done before the function call that follows it, and one call before the next."""
        if self.message is not None and not self._done(self.message.item):
            await self.message.finish()
        await self._close_open("completed", before=output_index)

    async def _delta(self, delta: dict[str, Any]) -> None:
        for call in delta.get("tool_calls") or []:
            await self._tool_delta(call)
        content = delta.get("content")
        if not content:
            return
        if self.message is None or self._done(self.message.item):  # text after a call: a new message
            self.held += content
            if not self.held.strip():
                return
            if self.plan.tool_names and _TOOLISH.match(self.held):
                return  # may be a tool call written as text: not spoken until known
            content, self.held = self.held.lstrip(), ""
            await self._open_message()
        assert self.message is not None  # noqa: S101 - opened above
        await self.message.write(content)

    async def _open_message(self) -> None:
        self.message = _Message(self, len(self.output))
        await self.message.open()

    async def _tool_delta(self, call: dict[str, Any]) -> None:
        index = int(call.get("index") or 0)
        function = call.get("function") or {}
        if index not in self.calls:
            await self._close_before(len(self.output))
            self.calls[index] = _Call(
                self, len(self.output), str(call.get("id") or new_id("call")), str(function.get("name") or "")
            )
            await self.add_item(self.calls[index].item, self.calls[index].output_index)
        elif function.get("name") and not self.calls[index].item.data["name"]:
            self.calls[index].item.data["name"] = function["name"]
        if function.get("arguments"):
            await self.calls[index].write(str(function["arguments"]))

    async def _settle_held(self) -> None:
        """The upstream ended with text that looked like a tool call: a call if it is one, else text."""
        text, self.held = self.held, ""
        try:
            parsed = json.loads(_TOOL_TAGS.sub("", text).strip())
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and len(parsed) == 1:
            parsed = parsed[0]
        if isinstance(parsed, dict) and parsed.get("name") in self.plan.tool_names:
            arguments = parsed.get("arguments", parsed.get("parameters", {}))
            await self._tool_delta(
                {
                    "index": len(self.calls),
                    "function": {
                        "name": parsed["name"],
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
            )
            return
        await self._open_message()
        assert self.message is not None  # noqa: S101 - opened above
        await self.message.write(text.lstrip())
