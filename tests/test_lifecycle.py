"""A response that starts can finish, a spoken reply has a cap, and stopping or crashing loses nothing.

- Admission: a streamed voice chat reserves its speech before its 200; a busy server answers 503 up
  front, and work arriving mid-stream cannot break a stream already admitted.
- The spoken-reply cap (VOICEPROXY_MAX_SPOKEN_CHARS): the reply stops at a sentence boundary, says
  so with finish_reason "length", and the audit row records it.
- SIGTERM drains (plain `daphne voiceproxy.asgi:application`, as README and process managers start
  it): listening stops, streams in flight end with [DONE], each has its row, the process exits.
- SIGKILL loses no row: what the database had not written yet comes back from the journal.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from django.db import connection

from bench.harness import speech
from registry.models import RequestLog, Upstream
from tests.audit_log import audit_row
from tests.conftest import Server, server_env

LONG_REPLY = " ".join(
    f"Sentence number {i} of this long reply is here to make it go on for a while." for i in range(1, 13)
)
# The loopback upstream under a patient name: its streams may be held for seconds (the session's
# `fake-llm` route times out after 3 s, for the timeout tests).
PATIENT = "patient-llm"
VOICE_CHAT = {
    "model": PATIENT,
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "pcm16"},
    "messages": [{"role": "user", "content": "hi"}],
}


def _audio_part() -> dict[str, Any]:
    wav = speech.speech("What time does the train leave?")
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Stream:
    """A streamed voice chat read in a thread: its status, its SSE events and how it ended."""

    def __init__(self, url: str, key: str, body: dict[str, Any] | None = None) -> None:
        self.status = 0
        self.headers: httpx.Headers | None = None
        self.events: list[Any] = []
        self.started = threading.Event()  # headers arrived (or the request failed)
        self.audio = threading.Event()  # the first audio delta arrived
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(url, key, body or {**VOICE_CHAT, "stream": True})
        )
        self.thread.start()

    def _run(self, url: str, key: str, body: dict[str, Any]) -> None:
        try:
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json=body, headers=_headers(key), timeout=60
            ) as response:
                self.status, self.headers = response.status_code, response.headers
                self.started.set()
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    payload = line.removeprefix("data: ")
                    self.events.append(payload if payload == "[DONE]" else json.loads(payload))
                    if any(c.get("delta", {}).get("audio", {}).get("data") for c in self.chunks()[-1:]):
                        self.audio.set()
                if response.status_code != 200:
                    response.read()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.started.set()
            self.audio.set()

    def chunks(self) -> list[dict[str, Any]]:
        return [c for e in self.events if isinstance(e, dict) for c in e.get("choices", [])]

    def join(self) -> Stream:
        self.thread.join(timeout=90)
        assert not self.thread.is_alive()
        return self

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"

    @property
    def request_id(self) -> str:
        assert self.headers is not None
        return self.headers["x-request-id"]

    def transcript(self) -> str:
        return "".join(c["delta"].get("audio", {}).get("transcript", "") for c in self.chunks())

    def audio_bytes(self) -> int:
        return sum(len(c["delta"].get("audio", {}).get("data", "")) for c in self.chunks())


@pytest.fixture(scope="module")
def small_server(gateway: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Room for two calls in the pool (one thread, one queued) and a short spoken cap."""
    server = Server(
        server_env(
            VOICEPROXY_INFERENCE_THREADS="1",
            VOICEPROXY_QUEUE_LIMIT="1",
            VOICEPROXY_MAX_SPOKEN_CHARS="200",
        ),
        tmp_path_factory.mktemp("small") / "daphne.log",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module", autouse=True)
def _patient_upstream(gateway: Server, upstream: Any) -> Iterator[None]:
    Upstream.objects.update_or_create(
        name="patient-loopback",
        defaults={"base_url": upstream.base_url, "chat_models": [PATIENT], "timeout": 120, "enabled": True},
    )
    yield
    Upstream.objects.filter(name="patient-loopback").delete()


@pytest.fixture(autouse=True)
def _release_upstream(upstream: Any) -> Iterator[None]:
    yield
    upstream.reset()


def test_a_busy_server_refuses_a_stream_before_its_200_and_admitted_streams_finish(
    small_server, api_key, upstream
):
    upstream.hold = True  # each stream pauses after its first sentence
    first, second = (Stream(small_server.url, api_key.secret) for _ in range(2))
    for stream in (first, second):
        assert stream.audio.wait(60) and stream.status == 200, (stream.status, stream.error, stream.events)
    # Both admitted streams hold the pool's two places: a third is refused up front, plainly.
    third = httpx.post(
        f"{small_server.url}/v1/chat/completions",
        json={**VOICE_CHAT, "stream": True},
        headers=_headers(api_key.secret),
        timeout=60,
    )
    assert third.status_code == 503, third.text
    assert third.json()["error"]["code"] == "server_busy" and int(third.headers["retry-after"]) >= 1
    # A spoken question is refused before it is transcribed: no work is wasted on a reply that
    # could not be spoken.
    spoken_question = httpx.post(
        f"{small_server.url}/v1/chat/completions",
        json={**VOICE_CHAT, "messages": [{"role": "user", "content": [_audio_part()]}]},
        headers=_headers(api_key.secret),
        timeout=60,
    )
    assert spoken_question.status_code == 503, spoken_question.text
    refused = audit_row(spoken_question.headers["x-request-id"])
    assert refused.status_code == 503 and refused.stt_ms is None
    # Work arriving mid-stream is refused too, rather than taking the places the streams need.
    with ThreadPoolExecutor(3) as pool:
        burst = list(
            pool.map(
                lambda _: httpx.post(
                    f"{small_server.url}/v1/audio/speech",
                    json={
                        "model": "tts-1",
                        "voice": "alloy",
                        "input": "Hello there.",
                        "response_format": "pcm",
                    },
                    headers=_headers(api_key.secret),
                    timeout=60,
                ),
                range(3),
            )
        )
    assert {r.status_code for r in burst} == {503}
    upstream.release.set()
    for stream in (first.join(), second.join()):
        assert stream.done and stream.error is None
        assert not [e for e in stream.events if isinstance(e, dict) and "error" in e]
        assert stream.transcript() == upstream.reply and stream.audio_bytes() > 0
        assert audit_row(stream.request_id).status_code == 200
    assert audit_row(third.headers["x-request-id"]).status_code == 503


def test_a_streamed_spoken_reply_stops_at_its_cap(small_server, api_key, upstream):
    upstream.reply = LONG_REPLY
    stream = Stream(small_server.url, api_key.secret).join()
    assert stream.status == 200 and stream.done
    transcript = stream.transcript()
    assert 0 < len(transcript) <= 200 < len(LONG_REPLY) and LONG_REPLY.startswith(transcript)
    assert stream.audio_bytes() > 0
    finishes = [c["finish_reason"] for c in stream.chunks() if c.get("finish_reason")]
    assert finishes == ["length"]
    row = audit_row(stream.request_id)
    assert row.reply_capped and row.status_code == 200
    # The next turn's context says what was heard: the whole sentences spoken, not the cut words.
    audio_id = next(c["delta"]["audio"]["id"] for c in stream.chunks() if c["delta"].get("audio"))
    upstream.reset()
    follow_up = httpx.post(
        f"{small_server.url}/v1/chat/completions",
        json={
            **VOICE_CHAT,
            "modalities": ["text"],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "audio": {"id": audio_id}},
                {"role": "user", "content": "go on"},
            ],
        },
        headers=_headers(api_key.secret),
        timeout=60,
    )
    assert follow_up.status_code == 200, follow_up.text
    heard = upstream.last_request["json"]["messages"][1]["content"]
    assert heard.endswith(".") and LONG_REPLY.startswith(heard) and len(heard) <= len(transcript)


def test_a_whole_spoken_reply_stops_at_the_last_sentence_within_its_cap(small_server, api_key, upstream):
    upstream.reply = LONG_REPLY
    response = httpx.post(
        f"{small_server.url}/v1/chat/completions",
        json={**VOICE_CHAT, "audio": {"voice": "alloy", "format": "wav"}},
        headers=_headers(api_key.secret),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    transcript = choice["message"]["audio"]["transcript"]
    assert choice["finish_reason"] == "length"
    assert transcript.endswith(".") and len(transcript) <= 200 and LONG_REPLY.startswith(transcript)
    assert audit_row(response.headers["x-request-id"]).reply_capped
    # Within the cap nothing changes.
    upstream.reset()
    short = httpx.post(
        f"{small_server.url}/v1/chat/completions",
        json={**VOICE_CHAT, "audio": {"voice": "alloy", "format": "wav"}},
        headers=_headers(api_key.secret),
        timeout=60,
    )
    assert short.json()["choices"][0]["finish_reason"] == "stop"
    assert not audit_row(short.headers["x-request-id"]).reply_capped


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def _wait(predicate: Any, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sigterm_drains_streams_in_flight_then_exits(gateway, api_key, upstream, tmp_path):
    server = Server(server_env(VOICEPROXY_DRAIN_SECONDS="60"), tmp_path / "daphne.log")
    try:
        kept_alive = httpx.Client(
            base_url=server.url,
            headers=_headers(api_key.secret),
            timeout=30,
            limits=httpx.Limits(keepalive_expiry=600),  # kept open, however slow the streams are
        )
        assert kept_alive.get("/v1/models").status_code == 200  # a connection kept open across SIGTERM
        upstream.hold = True
        streams = [Stream(server.url, api_key.secret) for _ in range(3)]
        for stream in streams:
            assert stream.audio.wait(60) and stream.status == 200, (stream.status, stream.error)
        server.process.send_signal(signal.SIGTERM)
        assert _wait(lambda: _refuses_connections(server.port)), "still accepting connections"
        late = kept_alive.get("/v1/models")  # on the connection opened before SIGTERM
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        assert server.process.poll() is None  # still serving its streams
        upstream.release.set()
        for stream in streams:
            stream.join()
            assert stream.done and stream.error is None and stream.transcript() == upstream.reply
        assert server.process.wait(timeout=60) == 0
        for stream in streams:
            assert audit_row(stream.request_id).status_code == 200
        assert audit_row(late.headers["x-request-id"]).status_code == 503
        assert "drained; stopping" in server.log()
    finally:
        upstream.release.set()
        server.stop()


def test_a_drain_that_runs_out_cuts_what_is_left_and_logs_it(gateway, api_key, upstream, tmp_path):
    server = Server(server_env(VOICEPROXY_DRAIN_SECONDS="1"), tmp_path / "first.log")
    try:
        upstream.hold = True  # the streams cannot finish within the drain time
        streams = [Stream(server.url, api_key.secret) for _ in range(2)]
        for stream in streams:
            assert stream.audio.wait(60) and stream.status == 200
        server.process.send_signal(signal.SIGTERM)
        # Cut, and said so, not a crash (tearing down inference in flight used to segfault).
        assert server.process.wait(timeout=60) == 1
        assert "stopping with requests cut short" in server.log()
        upstream.release.set()
        for stream in streams:
            assert not stream.join().done
    finally:
        server.stop()
    restarted = Server(server_env(), tmp_path / "second.log")  # the cut requests' rows, from the journal
    try:
        for stream in streams:
            row = audit_row(stream.request_id, timeout=30)
            assert row.error_code == "interrupted" and row.status_code == 500
    finally:
        restarted.stop()


@contextmanager
def _audit_inserts_refused() -> Iterator[None]:
    """A trigger refuses every INSERT into the audit table: the server's rows are not written
    while it exists (as if the process died before its database thread got to them)."""
    table = RequestLog._meta.db_table
    sqlite = connection.vendor == "sqlite"
    with connection.cursor() as cursor:
        if sqlite:
            cursor.execute(
                f"CREATE TRIGGER refuse_audit BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        else:
            cursor.execute(
                "CREATE FUNCTION refuse_audit() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER refuse_audit BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER refuse_audit" if sqlite else f"DROP TRIGGER refuse_audit ON {table}")
            if not sqlite:
                cursor.execute("DROP FUNCTION refuse_audit()")


def test_rows_survive_a_crash_of_the_process(gateway, api_key, upstream, tmp_path):
    server = Server(server_env(), tmp_path / "first.log")
    try:
        with _audit_inserts_refused():
            models = httpx.get(f"{server.url}/v1/models", headers=_headers(api_key.secret), timeout=30)
            finished = Stream(server.url, api_key.secret).join()
            missing = httpx.get(
                f"{server.url}/v1/models/no-such-model", headers=_headers(api_key.secret), timeout=30
            )
            upstream.hold = True
            in_flight = Stream(server.url, api_key.secret)
            assert in_flight.audio.wait(60) and in_flight.status == 200
            assert models.status_code == 200 and finished.done and missing.status_code == 404
            server.process.kill()  # SIGKILL: no clean-up of any kind
            server.process.wait(timeout=30)
            upstream.release.set()
            in_flight.join()
        delivered = [models.headers["x-request-id"], finished.request_id, missing.headers["x-request-id"]]
        assert not RequestLog.objects.filter(request_id__in=delivered).exists()
    finally:
        server.stop()
    restarted = Server(server_env(), tmp_path / "second.log")  # recovers the journal as it starts
    try:
        assert audit_row(delivered[0], timeout=30).status_code == 200
        assert audit_row(delivered[1]).status_code == 200 and audit_row(delivered[1]).streamed
        assert audit_row(delivered[2]).status_code == 404
        interrupted = audit_row(in_flight.request_id)
        assert interrupted.error_code == "interrupted" and interrupted.status_code == 500
        assert RequestLog.objects.filter(request_id__in=delivered).count() == 3  # once each
    finally:
        restarted.stop()
