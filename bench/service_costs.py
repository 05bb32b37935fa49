"""The gateway's own per-request steps around the engines, timed one by one in the bench process.

The functions are the gateway's (the registry snapshot, registry.speech.tts, chat.upstream, chat.audio_store,
the audit row's INSERT, the thread hops), run here on the gateway's SQLite database after
`bench.registry_setup.use_gateway_settings`; then whole requests through Django's AsyncClient (the
gateway's middleware, DRF and views in this process: no socket, no daphne). Each figure is the median
of `runs` awaited calls after two untimed ones. The gateway must be idle meanwhile: the writes go to
its database.
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

from bench.common import median


async def _timed(call: Callable[[], Awaitable[object]], runs: int, pause: float = 0.0) -> float:
    times = []
    for i in range(runs + 2):
        await asyncio.sleep(pause)
        started = time.perf_counter()
        await call()
        if i >= 2:
            times.append(time.perf_counter() - started)
    return median(times)


VOICE_CHAT_TOTAL = "Django in-process: resent-clip voice chat (cache hit, wav out)"
VOICE_CHAT_OUTSIDE = "Django in-process: resent-clip voice chat, total - its own llm + tts"
# Back to back, FakeUpstream's non-streaming answers (headers and body in two writes) meet Nagle and
# delayed ACK and stall ~40 ms; a pause between calls, as in the benchmarks' rounds, avoids that.
UPSTREAM_PAUSE_S = 0.15


def _noop() -> None:
    return None


async def _costs(
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

    from registry import audit, db_threads, keys, snapshot
    from registry.models import RequestLog
    from registry.speech import tts, workers

    def key_lookup() -> object:
        return snapshot.current_sync().api_key(keys.hash_secret(api_key_secret))

    def audit_insert() -> Awaitable[object]:
        return db_threads.foreground.run(
            RequestLog.objects.create,
            request_id="req_bench_probe",
            method="POST",
            endpoint="/v1/bench-probe",
            status_code=200,
        )

    async def voicing_in_a_request() -> None:
        # As in a request: the first lookup checks the registry version, the second reuses it.
        token = audit._current.set(
            audit.AuditRecord(request_id="req_bench_probe", method="POST", endpoint="/")
        )
        try:
            await tts.voicing(api_key=None, model=tts_model, voice=voice)
        finally:
            audit._current.reset(token)

    rows = [
        ("thread hop: sync_to_async (thread-sensitive), no work", await _timed(sync_to_async(_noop), runs)),
        (
            "thread hop: workers.run (the inference pool), no work",
            await _timed(lambda: workers.run(_noop), runs),
        ),
        (
            "registry version check (snapshot.current(), kept connection)",
            await _timed(lambda: db_threads.foreground.run(snapshot._fresh), runs),
        ),
        (
            "auth: version check + API key from the snapshot, behind a thread hop",
            await _timed(sync_to_async(key_lookup), runs),
        ),
        (
            "tts.voicing(): version check + model and voice from the snapshot",
            await _timed(voicing_in_a_request, runs),
        ),
    ]
    if chat_model is not None:
        from chat import audio_store, upstream

        async def save() -> None:
            await audio_store.save(audio_store.new_id(), "bench", audio_store.expiry())

        rows += [
            (
                "upstream.route(): the chat model's upstream",
                await _timed(lambda: upstream.route(chat_model), runs),
            ),
            (
                "transcript cache lookup (cache.aget, LocMem)",
                await _timed(lambda: cache.aget("bench:none"), runs),
            ),
            ("audio_store.save(): INSERT + expired DELETE", await _timed(save, runs)),
        ]
    rows.append(
        ("audit row INSERT on a kept connection (after the response)", await _timed(audit_insert, runs))
    )

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
            await _timed(lambda: checked(django_client.get("/health", headers=auth)), runs),
        ),
        (
            "Django in-process (AsyncClient): GET /v1/models",
            await _timed(lambda: checked(django_client.get("/v1/models", headers=auth)), runs),
        ),
    ]
    if chat_model is not None:
        body = {"model": chat_model, "messages": [{"role": "user", "content": "hi"}]}
        rows.append(
            (
                "Django in-process (AsyncClient): POST /v1/chat/completions, text (+ upstream)",
                await _timed(
                    lambda: checked(
                        django_client.post(
                            "/v1/chat/completions", body, content_type="application/json", headers=auth
                        )
                    ),
                    runs,
                    pause=UPSTREAM_PAUSE_S,
                ),
            )
        )
    if chat_model is not None and voice_chat_wav is not None:
        total, outside = await _voice_chat_in_process(
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
    `voice_chat_wav` the rows VOICE_CHAT_TOTAL and VOICE_CHAT_OUTSIDE (see _voice_chat_in_process).

    One event loop for all: chat.upstream keeps one httpx.AsyncClient per process, bound to its loop."""
    return asyncio.run(
        _costs(
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


async def _voice_chat_in_process(
    *, api_key_secret: str, model: str, voice: str, wav: bytes, runs: int
) -> tuple[float, float]:
    """The non-streaming voice chat (input_audio wav in, wav out) through Django in this process, no socket
    and no daphne, the same clip each time (a transcript cache hit after the first, untimed, call).

    Returns the median seconds per request and the median of each request's total minus its own
    llm_ms + tts_ms (RequestLog): the Django-side time outside the engines."""
    from asgiref.sync import sync_to_async
    from django.db import connections
    from django.test import AsyncClient

    from registry.models import RequestLog

    client = AsyncClient()
    body = spoken_question(model=model, voice=voice, wav=wav)
    totals: dict[str, float] = {}
    for i in range(
        runs + 2
    ):  # the first call transcribes (and loads the models here); the rest hit the cache
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
        if i >= 2:
            totals[response.headers["x-request-id"]] = elapsed

    def engine_seconds() -> dict[str, float]:
        rows = RequestLog.objects.filter(request_id__in=list(totals)).values("request_id", "llm_ms", "tts_ms")
        return {r["request_id"]: ((r["llm_ms"] or 0.0) + (r["tts_ms"] or 0.0)) / 1000 for r in rows}

    engines = await sync_to_async(engine_seconds)()
    await sync_to_async(connections.close_all)()
    return median(list(totals.values())), median([totals[i] - engines[i] for i in totals])


def _timed_sync(fn: Callable[[], object], runs: int = 20) -> float:
    times = []
    for i in range(runs + 2):
        started = time.perf_counter()
        fn()
        if i >= 2:
            times.append(time.perf_counter() - started)
    return median(times)


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
            _timed_sync(
                lambda: hashlib.sha256(
                    base64.b64decode(json.loads(request)["messages"][0]["content"][0]["input_audio"]["data"])
                ).hexdigest()
            ),
        ),
        (
            f"reply: base64 of the {len(reply_wav) // 1024} KiB wav",
            _timed_sync(lambda: base64.b64encode(reply_wav)),
        ),
        (f"reply: JSON encode of the {kib_out} KiB body", _timed_sync(lambda: json.dumps(body))),
        (
            f"client: JSON parse + SDK model of the {kib_out} KiB body",
            _timed_sync(lambda: ChatCompletion.model_validate(json.loads(response))),
        ),
    ]
