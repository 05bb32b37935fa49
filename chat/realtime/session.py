"""One Realtime session: client events in, server events out, with no knowledge of the socket.

`RealtimeSession.receive(text)` handles one client event; `send` (given by the edge) carries each
server event out; `close()` stops everything the session started. A bad event is answered with an
`error` event naming it (`event_id`) and its parameter, and the session goes on.

Work runs in tasks of the session's own context (no audit record current, the session's worker-pool
reservation in use): the VAD, the transcription of each turn while it is spoken, each response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from django.conf import settings

from chat.realtime import admission
from chat.realtime.config import (
    FORMAT_RATES,
    SessionConfig,
)
from chat.realtime.conversation import Conversation, Item, new_id
from chat.realtime.events import EventError, b64, decode_input, error_event
from chat.realtime.items import client_item
from chat.realtime.planning import plan_response
from chat.realtime.response import Response, ResponsePlan
from chat.realtime.turns import InputAudio, SpeechProbe, TurnDetector, TurnTranscript
from registry import audit
from registry.errors import AuthenticationFailed, InternalError, InvalidRequest, OpenAIError, ShuttingDown
from registry.models import ApiKey
from registry.resolved import ResolvedModel
from registry.speech import audio, stt, tts, workers
from registry.speech.engines.base import Samples
from voiceproxy import drain

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
MAX_APPEND_BYTES = 15 * 1024 * 1024  # OpenAI's limit for one append
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less
MIN_TRANSCRIBED_MS = 100
# The input buffer holds at most what OpenAI's does (15 MiB of 24 kHz pcm16: about 5.5 minutes)
# or VOICEPROXY_MAX_AUDIO_SECONDS, whichever is shorter.
MAX_BUFFER_MS = 15 * 1024 * 1024 / 2 / 24_000 * 1000
MAX_ITEMS = 1000  # conversation items a session keeps
MAX_PENDING_TRANSCRIPTIONS = 4  # committed turns and audio items not yet transcribed
KEEP_BEFORE_TURN_MS = 1000  # audio kept beyond the prefix padding while no one speaks


class RealtimeSession:
    def __init__(
        self,
        *,
        admitted: admission.Admission,
        record: audit.AuditRecord,
        send: Send,
        close: Callable[[int], Awaitable[None]],
    ) -> None:
        self.admitted = admitted
        self.api_key: ApiKey | None = admitted.api_key
        self.config: SessionConfig = admitted.config
        self.record = record
        self._send = send
        self._close = close
        self.conversation = Conversation()
        self.voicing: tts.Voicing | None = None
        self.stt_model: ResolvedModel | None = None
        self.response: Response | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self.planning = False  # a response is being planned (see _respond)
        self.started = time.monotonic()
        self.last_event = time.monotonic()
        self.audio_in_s = 0.0
        self.max_buffer_ms = min(MAX_BUFFER_MS, settings.VOICEPROXY_MAX_AUDIO_SECONDS * 1000)
        self.pending: set[asyncio.Future[str]] = set()  # transcriptions not done yet
        self.turns = 0
        self.buffer = InputAudio(FORMAT_RATES[self.config.input_format])
        self.turn: TurnTranscript | None = None
        self.turn_item: str | None = None
        self.listening: asyncio.Task[None] | None = None
        self._new_input()
        # Tasks run in a context of their own: no audit record current (a response opens its own),
        # and the session's reservation in the worker pool used by every call.
        self.context = audit.detached()
        if admitted.reservation is not None:
            self.context.run(workers.use, admitted.reservation)
            workers.use(admitted.reservation)  # the edge's context: handlers' pool calls (decoding)

    # --- plumbing -------------------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine, context=self.context.copy())
        if self.closed:  # nothing starts after close(): its resources are given back
            task.cancel()
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def track(self, transcription: asyncio.Future[str]) -> asyncio.Future[str]:
        """Count a transcription as pending until it ends (see check_pending())."""
        self.pending.add(transcription)
        transcription.add_done_callback(self.pending.discard)
        return transcription

    def check_pending(self) -> None:
        """Refuse more audio to transcribe while MAX_PENDING_TRANSCRIPTIONS wait: one client must
        not queue unbounded work (and audio) in the pool."""
        if len(self.pending) >= MAX_PENDING_TRANSCRIPTIONS:
            raise EventError(
                f"{len(self.pending)} transcriptions of this session are still running; wait for their "
                "completed events before committing more audio.",
                code="too_many_pending_transcriptions",
            )

    def add_item(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Add to the conversation; past MAX_ITEMS the oldest items leave the context."""
        previous = self.conversation.add(item, previous_item_id)
        del self.conversation.items[: max(0, len(self.conversation.items) - MAX_ITEMS)]
        return previous

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("realtime session %s: a task failed", self.config.id, exc_info=task.exception())

    async def send(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        await self._send({"event_id": new_id("event"), **event})

    async def error(self, exc: OpenAIError, event_id: str | None = None) -> None:
        await self.send(error_event(exc, event_id))

    def _new_input(self) -> None:
        """A new input buffer (a new format or turn detection): the old one's VAD work and turn
        stop, and the timeline goes on where it was."""
        if self.listening is not None:
            self.listening.cancel()
        if self.turn is not None:
            self.turn.cancel()
        rate = FORMAT_RATES[self.config.input_format]
        self.buffer = InputAudio(rate, start_ms=self.buffer.end_ms)
        self.probe = SpeechProbe(rate)
        vad = self.config.turn_detection
        self.detector = (
            TurnDetector(
                threshold=vad["threshold"],
                prefix_padding_ms=vad["prefix_padding_ms"],
                silence_duration_ms=vad["silence_duration_ms"],
                clock_ms=self.buffer.end_ms,
            )
            if vad
            else None
        )
        self.turn = None
        self.turn_item = None
        self.listening = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Apply a client secret's session, then say `session.created`."""
        self.record.usage.session_id = self.config.id
        if self.admitted.defaults:
            self.config = self.config.updated(self.admitted.defaults)
            self._new_input()
        await self._resolve(self.config, changed_voice=True, changed_stt=True)
        await self.send({"type": "session.created", "session": self.rendered()})
        self.spawn(self._watch())

    async def _watch(self) -> None:
        """Idle and maximum durations, and a server shutting down: the session ends with an error
        event saying which (a response being given finishes first when the server drains)."""
        idle, longest = settings.VOICEPROXY_REALTIME_IDLE_SECONDS, settings.VOICEPROXY_REALTIME_MAX_SECONDS
        while True:
            now = time.monotonic()
            busy = self.response is not None
            if drain.draining() and not busy:
                error: OpenAIError = ShuttingDown(
                    "The server is restarting; reconnect to go on.", retry_after=1
                )
                break
            if not busy and now - self.last_event >= idle:
                error = InvalidRequest(
                    f"The session was idle for {idle} s and has been closed.", code="session_idle_timeout"
                )
                break
            if now - self.started >= longest:
                error = InvalidRequest(
                    f"The session reached its maximum duration of {longest} s.", code="session_expired"
                )
                break
            await asyncio.sleep(
                max(0.05, min(idle - (now - self.last_event), longest - (now - self.started), 1.0))
            )
        self.record.fail(error)
        await self.error(error)
        await self._close(1001 if isinstance(error, ShuttingDown) else 1000)

    async def close(self) -> None:
        """The socket closed: stop all work and write the session's row."""
        if self.closed:
            return
        self.closed = True
        if self.response is not None:
            self.response.cancel("closed")
        if self.turn is not None:
            self.turn.cancel()
        others = [task for task in self.tasks if task is not asyncio.current_task()]
        response_task = self.response.task if self.response is not None else None
        for task in others:
            if task is not response_task:  # cancelled once, above
                task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        usage = self.record.usage
        usage.audio_seconds_in = round(self.audio_in_s, 3)
        usage.turns = self.turns
        usage.streamed = True
        try:
            await self.admitted.release()
        finally:  # the session's row is written whatever happens to its release
            self.record.finish(self.record.error.status if self.record.error else 200)

    # --- client events --------------------------------------------------------------------------

    async def receive(self, text: str | bytes) -> None:
        """Handle one client event. Never raises: whatever goes wrong is an `error` event."""
        if self.closed:
            return
        self.last_event = time.monotonic()
        event_id = None
        try:
            try:
                event = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise EventError("The event is not valid JSON.", code="invalid_json") from exc
            if not isinstance(event, dict):
                raise EventError("An event must be a JSON object.", code="invalid_event")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            kind = self._field(event, "type")
            handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None or not isinstance(kind, str):
                raise EventError(
                    f"Invalid value: '{kind}'. Unknown client event type.", param="type", code="invalid_value"
                )
            if self.config.kind == "transcription" and kind.startswith(
                ("response.", "conversation.item.truncate")
            ):
                raise EventError(
                    "A transcription session makes no responses.", param="type", code="invalid_value"
                )
            await handler(self, event)
        except OpenAIError as exc:
            await self.error(exc, event_id)
        except Exception as exc:  # a bug of ours: said as a server error, and the session goes on
            logger.exception("realtime session %s: handling an event failed", self.config.id)
            error = InternalError(f"The server could not handle the event ({type(exc).__name__}).")
            await self.error(error, event_id)

    def _field(self, event: dict[str, Any], name: str) -> Any:
        if name not in event:
            raise EventError(
                f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
            )
        return event[name]

    async def _session_update(self, event: dict[str, Any]) -> None:
        new = self.config.updated(self._field(event, "session"))
        old = self.config
        if new.model != old.model:
            await admission.check_model(self.api_key, new.model, param="session.model")
        await self._resolve(
            new,
            changed_voice=(new.voice, new.speech_model) != (old.voice, old.speech_model),
            changed_stt=new.transcription != old.transcription,
        )
        self.config = new
        if (new.input_format, new.turn_detection) != (old.input_format, old.turn_detection):
            self._new_input()
        await self.send({"type": "session.updated", "session": self.rendered()})

    def rendered(self) -> dict[str, Any]:
        return self.config.render(self.voicing.voice.name if self.voicing is not None else None)

    async def _resolve(self, config: SessionConfig, *, changed_voice: bool, changed_stt: bool) -> None:
        if changed_stt or self.stt_model is None:
            name = (config.transcription or {}).get("model")
            self.stt_model = await stt.resolve(
                api_key=self.api_key, name=name, param="session.audio.input.transcription.model"
            )
        if config.kind == "realtime" and (changed_voice or self.voicing is None):
            self.voicing = await self._voicing(config, config.voice, config.speed)

    async def _voicing(self, config: SessionConfig, name: str | None, speed: float) -> tts.Voicing:
        return await tts.voicing(
            api_key=self.api_key,
            model=config.speech_model,
            voice=name,
            speed=speed,
            model_param="session.speech_model",
            voice_param="session.audio.output.voice",
        )

    async def _append(self, event: dict[str, Any]) -> None:
        data = b64(self._field(event, "audio"), "audio")
        if len(data) > MAX_APPEND_BYTES:
            raise EventError(f"An append may carry at most {MAX_APPEND_BYTES} bytes of audio.", param="audio")
        fmt = self.config.input_format
        try:
            samples = decode_input(data, fmt) if fmt == "pcm" else await workers.run(decode_input, data, fmt)
        except audio.AudioError as exc:
            raise EventError(str(exc), param="audio", code="invalid_audio") from exc
        if self.buffer.end_ms - self.buffer.start_ms > self.max_buffer_ms:
            raise EventError(
                "The input audio buffer is full: commit or clear it.",
                param="audio",
                code="input_audio_buffer_full",
            )
        self.buffer.append(samples)
        self.audio_in_s += len(samples) / self.buffer.rate
        if self.detector is not None:
            self.probe.feed(samples)
            if self.listening is None or self.listening.done():
                self.listening = self.spawn(self._listen())

    async def _listen(self) -> None:
        """Score the audio as it arrives and act on what the VAD hears, in order."""
        probe, detector = self.probe, self.detector
        while probabilities := await probe.probabilities():
            if detector is None or probe is not self.probe or detector is not self.detector:
                return  # the buffer was cleared or replaced meanwhile: these scores are stale
            for probability in probabilities:
                for kind, ms in detector.push(probability):
                    await self._turn_event(kind, ms)
            if not detector.speaking:
                # Between turns only the prefix padding can still become part of one: a microphone
                # left open for hours keeps seconds of audio, not hours.
                self.buffer.drop_until(detector.clock_ms - detector.prefix_padding_ms - KEEP_BEFORE_TURN_MS)

    async def _turn_event(self, kind: str, ms: float) -> None:
        vad = self.config.turn_detection or {}
        if kind == "started":
            item_id = new_id("item")
            start = max(ms, self.buffer.start_ms)
            self.turn_item = item_id
            self.turn = TurnTranscript(self.buffer, start, self.transcribe, prompt=self.prompt())
            await self.send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": int(start),
                    "item_id": item_id,
                }
            )
            if self.response is not None and vad.get("interrupt_response", True):
                self.response.cancel("turn_detected")  # barge-in
        elif kind == "pause" and self.turn is not None:
            self.turn.pause(ms)
        elif kind == "cut" and self.turn is not None:
            self.turn.cut(ms)
        elif kind == "stopped" and self.turn is not None and self.turn_item is not None:
            turn, item_id = self.turn, self.turn_item
            self.turn, self.turn_item = None, None
            await self.send(
                {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": int(ms), "item_id": item_id}
            )
            await self._commit(item_id, turn, ms, respond=bool(vad.get("create_response", True)))

    def prompt(self) -> str:
        return str((self.config.transcription or {}).get("prompt") or "")

    async def transcribe(self, samples: Samples, prompt: str) -> str:
        if len(samples) < self.buffer.rate * MIN_TRANSCRIBED_MS / 1000:
            return ""
        language = (self.config.transcription or {}).get("language")
        result = await stt.run(
            api_key=self.api_key,
            source=audio.Pcm(samples, self.buffer.rate),
            task="transcribe",
            options=stt.SttOptions(language=language, prompt=prompt or None),
            model=self.stt_model,
        )
        return result.text

    async def _commit_event(self, event: dict[str, Any]) -> None:
        self.check_pending()
        if self.buffer.end_ms - self.buffer.start_ms < MIN_COMMIT_MS:
            raise EventError(
                "Error committing input audio buffer: buffer too small. "
                f"Expected at least {MIN_COMMIT_MS}ms of audio, "
                f"but buffer only has {self.buffer.end_ms - self.buffer.start_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        turn = self.turn or TurnTranscript(
            self.buffer, self.buffer.start_ms, self.transcribe, prompt=self.prompt()
        )
        item_id = self.turn_item or new_id("item")
        self.turn, self.turn_item = None, None
        if self.detector is not None:
            self.detector.speaking = False
        # Manual turns answer only when asked (response.create), as OpenAI's do.
        await self._commit(item_id, turn, self.buffer.end_ms, respond=False)

    async def _commit(self, item_id: str, turn: TurnTranscript, end_ms: float, *, respond: bool) -> None:
        """The buffer up to `end_ms` becomes a user item; its transcript follows when ready."""
        self.turns += 1
        stopped = time.perf_counter()
        item = Item(
            {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            }
        )
        # Cut now, before the buffer lets go of the turn; in the session's context (no audit record).
        transcribing = self.track(self.context.copy().run(turn.finish, end_ms))
        item.transcript = transcribing
        self.buffer.drop_until(end_ms)
        previous = self.add_item(item)
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous}
        )
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item.data})
        self.spawn(self._report_transcript(item, transcribing, stopped, (end_ms - turn.start_ms) / 1000))
        if respond and self.config.kind == "realtime":
            self.spawn(self._respond_to_turn(stopped, transcribing))

    async def _respond_to_turn(self, stopped: float, transcribing: asyncio.Future[str]) -> None:
        """Answer a turn VAD ended; a response still winding down (cancelled by the barge-in) ends first."""
        while self.planning or self.response is not None:
            if self.response is not None and self.response.task is not None:
                await asyncio.gather(self.response.task, return_exceptions=True)
            else:
                await asyncio.sleep(0.01)
        try:
            await self._respond(None, stt_started=stopped, awaiting=transcribing)
        except OpenAIError as exc:
            await self.error(exc)

    async def _report_transcript(
        self, item: Item, transcribing: asyncio.Future[str], stopped: float, audio_seconds: float
    ) -> None:
        """The transcription events of a user turn (one audit row per turn in a transcription session);
        their usage is the turn's audio in seconds, as OpenAI bills it."""
        scope = (
            audit.scope(method="WS", endpoint="/v1/realtime/transcription")
            if self.config.kind == "transcription"
            else contextlib.nullcontext(None)
        )
        with scope as record:
            if record is not None:
                record.api_key_id, record.key_prefix = self.record.api_key_id, self.record.key_prefix
                record.usage.session_id = self.config.id
                if self.stt_model is not None:
                    record.add_model(self.stt_model.model_id)
            try:
                text = await transcribing
            except OpenAIError as exc:
                if record is not None:
                    record.fail(exc)
                await self.send(
                    {
                        "type": "conversation.item.input_audio_transcription.failed",
                        "item_id": item.id,
                        "content_index": 0,
                        "error": {
                            "type": exc.type,
                            "code": str(exc.code or ""),
                            "message": exc.message,
                            "param": exc.param,
                        },
                    }
                )
                return
            if record is not None:
                record.usage.stt_ms = (time.perf_counter() - stopped) * 1000
            item.data["content"][0]["transcript"] = text
            ids = {"item_id": item.id, "content_index": 0}
            if text:
                await self.send(
                    {"type": "conversation.item.input_audio_transcription.delta", **ids, "delta": text}
                )
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    **ids,
                    "transcript": text,
                    "usage": {"type": "duration", "seconds": max(0.0, round(audio_seconds, 3))},
                }
            )
            previous = self.conversation.previous_id(item.id)
            await self.send(
                {"type": "conversation.item.done", "previous_item_id": previous, "item": item.data}
            )

    async def _clear(self, event: dict[str, Any]) -> None:
        if self.turn is not None:
            self.turn.cancel()
        if self.listening is not None:
            self.listening.cancel()
        self.buffer.clear()
        self.probe = SpeechProbe(self.buffer.rate)
        if self.detector is not None:
            self.detector.speaking, self.detector.clock_ms = False, self.buffer.end_ms
            self.detector.silence_from, self.detector.paused = None, False
        self.turn, self.turn_item = None, None
        await self.send({"type": "input_audio_buffer.cleared"})

    # --- conversation ---------------------------------------------------------------------------

    async def _item_create(self, event: dict[str, Any]) -> None:
        self.check_pending()
        item = await client_item(self, self._field(event, "item"), "item")
        before = event.get("previous_item_id")
        previous = self.add_item(item, before if isinstance(before, str) else None)
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item.data})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item.data})

    async def _item_delete(self, event: dict[str, Any]) -> None:
        item_id = self._field(event, "item_id")
        self.conversation.delete(item_id)
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _item_retrieve(self, event: dict[str, Any]) -> None:
        item = self.conversation.get(self._field(event, "item_id"))
        await self.send({"type": "conversation.item.retrieved", "item": item.data})

    async def _item_truncate(self, event: dict[str, Any]) -> None:
        item_id = self._field(event, "item_id")
        content_index = self._field(event, "content_index")
        audio_end_ms = self._field(event, "audio_end_ms")
        self.conversation.check_truncate(item_id, content_index, audio_end_ms)  # a refusal changes nothing
        if (
            self.response is not None
            and self.response.message is not None
            and self.response.message.item.id == item_id
        ):
            self.response.cancel("client_cancelled")  # cut while speaking: it stops here
            await asyncio.gather(*(t for t in [self.response.task] if t is not None), return_exceptions=True)
        self.conversation.truncate(item_id, content_index, audio_end_ms)
        await self.send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": content_index,
                "audio_end_ms": audio_end_ms,
            }
        )

    # --- responses ------------------------------------------------------------------------------

    async def _response_create(self, event: dict[str, Any]) -> None:
        overrides = event.get("response")
        if overrides is not None and not isinstance(overrides, dict):
            raise EventError("'response' must be an object.", param="response", code="invalid_type")
        await self._respond(overrides or {})

    async def _respond(
        self,
        overrides: dict[str, Any] | None,
        *,
        stt_started: float | None = None,
        awaiting: asyncio.Future[str] | None = None,
    ) -> None:
        if self.response is not None or self.planning:
            active = self.response.plan.id if self.response is not None else "(being planned)"
            raise EventError(
                f"Conversation already has an active response in progress: {active}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        self.planning = True  # held across the awaits below: a second response cannot slip in
        try:
            plan = await plan_response(self, overrides or {})
        except AuthenticationFailed as exc:  # the key was revoked or expired during the session
            await self.error(exc)
            await self._close(1008)
            return
        finally:
            self.planning = False
        if self.closed:
            return
        if awaiting is not None and stt_started is not None:
            plan.messages = self._after_transcript(plan.messages, awaiting, stt_started, plan)
        response = Response(
            plan, send=self.send, conversation_add=self.add_item, previous_id=self.conversation.previous_id
        )
        self.response = response
        response.task = self.spawn(response.run())
        response.task.add_done_callback(lambda _: self._response_ended(response))

    def _response_ended(self, response: Response) -> None:
        # A callback, not a finally: a task cancelled before its first step runs no code of its own.
        if self.response is response:
            self.response = None

    def _after_transcript(
        self,
        messages: Callable[[], Awaitable[list[dict[str, Any]]]],
        awaiting: asyncio.Future[str],
        started: float,
        plan: ResponsePlan,
    ) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
        async def wait() -> list[dict[str, Any]]:
            with contextlib.suppress(Exception):
                await asyncio.shield(awaiting)
            plan.stt_ms = (time.perf_counter() - started) * 1000
            record = audit.current()
            if record is not None:
                record.usage.stt_ms = plan.stt_ms
            return await messages()

        return wait

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        response_id = event.get("response_id")
        if self.response is None or (response_id and response_id != self.response.plan.id):
            raise EventError(
                "Cancellation failed: no active response found.",
                code="response_cancel_not_active",
                param="response_id",
            )
        self.response.cancel("client_cancelled")

    async def _output_audio_clear(self, event: dict[str, Any]) -> None:
        response = self.response
        if response is None:
            raise EventError(
                "There is no response whose audio could be cleared.", code="response_cancel_not_active"
            )
        response.cancel("client_cancelled")
        await self.send({"type": "output_audio_buffer.cleared", "response_id": response.plan.id})


_HANDLERS: dict[str, Callable[[RealtimeSession, dict[str, Any]], Awaitable[None]]] = {
    "session.update": RealtimeSession._session_update,
    "input_audio_buffer.append": RealtimeSession._append,
    "input_audio_buffer.commit": RealtimeSession._commit_event,
    "input_audio_buffer.clear": RealtimeSession._clear,
    "conversation.item.create": RealtimeSession._item_create,
    "conversation.item.delete": RealtimeSession._item_delete,
    "conversation.item.retrieve": RealtimeSession._item_retrieve,
    "conversation.item.truncate": RealtimeSession._item_truncate,
    "response.create": RealtimeSession._response_create,
    "response.cancel": RealtimeSession._response_cancel,
    "output_audio_buffer.clear": RealtimeSession._output_audio_clear,
}
