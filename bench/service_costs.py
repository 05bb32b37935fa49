"""The gateway's own per-request steps around the engines, timed one by one in the bench process.

The functions are the gateway's (the registry snapshot, registry.access, registry.speech.tts,
chat.upstream, chat.audio_store, the audit row's INSERT, the thread hops), run here on the gateway's
SQLite database after `Gateway.use_settings()`; a step that a request runs once per request runs here
in an audit scope of its own per call (method BENCH; its row is queued on the background database
thread as the scope ends), as it would in a request. Then whole requests through Django's
AsyncClient (the gateway's middleware, DRF and views in this process: no socket, no daphne). Each
figure is the median of `runs` awaited calls after two untimed ones (bench.report.atimed_median). The
gateway must be idle meanwhile: the writes go to its database.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from openai.types.chat import ChatCompletion

from bench.gateway import STT_MODEL
from bench.report import WARMUP, atimed_median, durations_in_seconds, median, timed_median

VOICE_CHAT_TOTAL = "Django in-process: resent-clip voice chat (cache hit, wav out)"
VOICE_CHAT_OUTSIDE = "Django in-process: resent-clip voice chat, total - its own llm + tts"
# Back to back, FakeUpstream's non-streaming answers (headers and body in two writes) meet Nagle and
# delayed ACK and stall ~40 ms; a pause between calls, as in the benchmarks' rounds, avoids that.
UPSTREAM_PAUSE_S = 0.15


def nothing() -> None:
    return None


async def in_scope(step: Callable[[], Awaitable[object]]) -> None:
    """`step` as a request runs it: in an audit scope of its own (its first registry read checks the
    registry's version; the row is queued as the scope ends)."""
    from registry import audit

    with audit.scope(method="BENCH", endpoint="bench/service_costs"):
        await step()


async def nothing_awaited() -> None:
    return None


async def costs(
    *,
    api_key_secret: str,
    tts_model: str | None,
    voice: str,
    chat_model: str | None,
    voice_chat_wav: bytes | None,
    runs: int,
) -> list[tuple[str, float]]:
    from asgiref.sync import sync_to_async
    from django.core.cache import cache
    from django.db import connections
    from django.test import AsyncClient

    from registry import access, db_threads, snapshot
    from registry.models import RequestLog
    from registry.speech import tts, workers

    def audit_insert() -> Awaitable[object]:
        return db_threads.foreground.run(
            RequestLog.objects.create,
            request_id="req_bench_probe",
            method="POST",
            endpoint="/v1/bench-probe",
            status_code=200,
        )

    def timed(step: Callable[[], Awaitable[object]], pause: float = 0.0) -> Awaitable[float]:
        return atimed_median(step, runs=runs, pause=pause)

    rows = [
        ("thread hop: sync_to_async (thread-sensitive), no work", await timed(sync_to_async(nothing))),
        ("thread hop: workers.run (the inference pool), no work", await timed(lambda: workers.run(nothing))),
        (
            "audit.scope() with nothing in it: the record, its row queued",
            await timed(lambda: in_scope(nothing_awaited)),
        ),
        (
            "registry version check: snapshot.current() in a new audit scope (kept connection)",
            await timed(lambda: in_scope(snapshot.current)),
        ),
        (
            "auth: access.aauthenticate() in a new audit scope (thread hop, version check, key)",
            await timed(lambda: in_scope(lambda: access.aauthenticate(api_key_secret))),
        ),
        (
            "tts.voicing() in a new audit scope: version check + model and voice from the snapshot",
            await timed(lambda: in_scope(lambda: tts.voicing(api_key=None, model=tts_model, voice=voice))),
        ),
    ]
    if chat_model is not None:
        from chat import audio_store, upstream

        async def save() -> None:
            await audio_store.save(audio_store.new_id(), "bench", audio_store.expiry())

        rows += [
            (
                "upstream.route() in a new audit scope: version check + the chat model's upstream",
                await timed(lambda: in_scope(lambda: upstream.route(chat_model))),
            ),
            ("transcript cache lookup (cache.aget, LocMem)", await timed(lambda: cache.aget("bench:none"))),
            ("audio_store.save(): INSERT + expired DELETE", await timed(save)),
        ]
    rows.append(("audit row INSERT on a kept connection (after the response)", await timed(audit_insert)))

    # The whole Django side (middleware, DRF, view, audit row) in this process: no socket, no daphne.
    django_client = AsyncClient()
    auth = {"authorization": f"Bearer {api_key_secret}"}  # per call: AsyncClient(headers=) is not applied

    async def checked(call: Awaitable[Any]) -> Any:
        response = await call
        if response.status_code != 200:
            raise RuntimeError(
                f"in-process probe answered {response.status_code}: {response.content[:300]!r}"
            )
        return response

    rows += [
        (
            "Django in-process (AsyncClient): GET /health",
            await timed(lambda: checked(django_client.get("/health", headers=auth))),
        ),
        (
            "Django in-process (AsyncClient): GET /v1/models",
            await timed(lambda: checked(django_client.get("/v1/models", headers=auth))),
        ),
    ]
    if chat_model is not None:
        body = {"model": chat_model, "messages": [{"role": "user", "content": "hi"}]}
        rows.append(
            (
                "Django in-process (AsyncClient): POST /v1/chat/completions, text (+ upstream)",
                await timed(
                    lambda: checked(
                        django_client.post(
                            "/v1/chat/completions", body, content_type="application/json", headers=auth
                        )
                    ),
                    pause=UPSTREAM_PAUSE_S,
                ),
            )
        )
    if chat_model is not None and voice_chat_wav is not None:
        total, outside = await voice_chat_in_process(
            api_key_secret=api_key_secret, model=chat_model, voice=voice, wav=voice_chat_wav, runs=runs
        )
        rows += [(VOICE_CHAT_TOTAL, total), (VOICE_CHAT_OUTSIDE, outside)]
    await sync_to_async(RequestLog.objects.filter(request_id="req_bench_probe").delete)()
    await sync_to_async(connections.close_all)()
    return rows


def service_costs(
    *,
    api_key_secret: str,
    tts_model: str | None,
    voice: str,
    chat_model: str | None = None,
    voice_chat_wav: bytes | None = None,
    runs: int = 20,
) -> list[tuple[str, float]]:
    """(what, median seconds) for each step; chat steps only when `chat_model` is given, and with
    `voice_chat_wav` the rows VOICE_CHAT_TOTAL and VOICE_CHAT_OUTSIDE (see voice_chat_in_process).

    One event loop for all: chat.upstream keeps one httpx.AsyncClient per process, bound to its loop."""
    return asyncio.run(
        costs(
            api_key_secret=api_key_secret,
            tts_model=tts_model,
            voice=voice,
            chat_model=chat_model,
            voice_chat_wav=voice_chat_wav,
            runs=runs,
        )
    )


def spoken_question(*, model: str, voice: str, wav: bytes) -> dict[str, Any]:
    """The voice-chat request the benchmarks send: `wav` as input_audio, a wav reply wanted."""
    return {
        "model": model,
        "modalities": ["text", "audio"],
        "audio": {"voice": voice, "format": "wav"},
        "transcription_model": STT_MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_audio",
                        "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"},
                    }
                ],
            }
        ],
    }


async def voice_chat_in_process(
    *, api_key_secret: str, model: str, voice: str, wav: bytes, runs: int
) -> tuple[float, float]:
    """The non-streaming voice chat (input_audio wav in, wav out) through Django in this process, no socket
    and no daphne, the same clip each time (a transcript cache hit after the first, untimed, call).

    Returns the median seconds per request and the median of each request's total minus its own
    llm_ms + tts_ms (RequestLog): the Django-side time outside the engines; both in seconds."""
    from asgiref.sync import sync_to_async
    from django.db import connections
    from django.test import AsyncClient

    from registry.models import RequestLog

    client = AsyncClient()
    body = spoken_question(model=model, voice=voice, wav=wav)
    totals: dict[str, float] = {}
    # The first, untimed, call transcribes (and loads the models in this process); the rest hit the cache.
    for i in range(WARMUP + runs):
        await asyncio.sleep(UPSTREAM_PAUSE_S)
        started = time.perf_counter()
        response = await client.post(
            "/v1/chat/completions",
            body,
            content_type="application/json",
            headers={"authorization": f"Bearer {api_key_secret}"},
        )
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(
                f"in-process voice chat answered {response.status_code}: {response.content[:300]!r}"
            )
        if i >= WARMUP:
            totals[response.headers["x-request-id"]] = elapsed

    def engine_seconds() -> dict[str, float]:
        rows = RequestLog.objects.filter(request_id__in=list(totals)).values("request_id", "llm_ms", "tts_ms")
        seconds = [durations_in_seconds(r) for r in rows]
        return {r["request_id"]: (r["llm"] or 0.0) + (r["tts"] or 0.0) for r in seconds}

    from registry import db_threads

    # The rows are written after each response, by the background thread: wait for the last one.
    await sync_to_async(db_threads.background.flush)()
    engines = await sync_to_async(engine_seconds)()
    await sync_to_async(connections.close_all)()
    return median(list(totals.values())), median([totals[i] - engines[i] for i in totals])


def payload_costs(
    *, model: str, voice: str, reply: str, reply_wav: bytes, wav: bytes
) -> list[tuple[str, float]]:
    """The work a non-streaming voice reply adds around stt, llm and tts, on real sizes: `wav` comes in
    as input_audio, `reply_wav` goes out as message.audio.data. Pure CPU, timed in this process."""
    request = json.dumps(spoken_question(model=model, voice=voice, wav=wav))
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "audio": {
                        "id": "audio_" + "0" * 32,
                        "data": base64.b64encode(reply_wav).decode(),
                        "expires_at": 0,
                        "transcript": reply,
                    },
                },
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    response = json.dumps(body)
    kib_in, kib_out = len(request) // 1024, len(response) // 1024
    return [
        (
            f"request: JSON parse, base64 decode, sha256 ({kib_in} KiB body)",
            timed_median(
                lambda: hashlib.sha256(
                    base64.b64decode(json.loads(request)["messages"][0]["content"][0]["input_audio"]["data"])
                ).hexdigest()
            ),
        ),
        (
            f"reply: base64 of the {len(reply_wav) // 1024} KiB wav",
            timed_median(lambda: base64.b64encode(reply_wav)),
        ),
        (f"reply: JSON encode of the {kib_out} KiB body", timed_median(lambda: json.dumps(body))),
        (
            f"client: JSON parse + SDK model of the {kib_out} KiB body",
            timed_median(lambda: ChatCompletion.model_validate(json.loads(response))),
        ),
    ]
