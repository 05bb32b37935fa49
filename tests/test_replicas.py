"""Two replicas on one PostgreSQL + Redis behind nginx (the production template, rendered with a
server line per replica as a configuration naming its replicas has): what they share, and a rolling
restart under load that loses nothing.

Shared state lives in the database and in Django's cache on Redis, so these tests run where Redis is
configured (the PostgreSQL + Redis pass of .ci/run); without it each process has its own cache, as a
single-process server on SQLite is meant to.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import websockets.exceptions
import websockets.sync.client
from django.conf import settings

from bench.harness import speech
from bench.harness.nginx import NGINX, Nginx
from bench.harness.replica import Replica
from registry.models import SpeechToTextModel
from tests.audit_log import audit_rows
from tests.conftest import Key, server_env
from tests.realtime_client import Events

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="no nginx binary (Debian: apt-get install nginx)"),
    pytest.mark.skipif(
        "redis" not in settings.CACHES["default"]["BACKEND"].lower(),
        reason="replicas share their cache through Redis: run with REDIS_URL (and PostgreSQL)",
    ),
]

QUESTION = speech.speech("What time is it?")


@pytest.fixture(scope="module")
def replicas(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    directory = tmp_path_factory.mktemp("replicas")
    env = server_env(
        VOICEPROXY_DRAIN_SECONDS="20",
        VOICEPROXY_HEARTBEAT_SECONDS="0.5",
        VOICEPROXY_AUTH_FAILURES_PER_MINUTE="4",
    )
    started = [Replica("a", directory, env), Replica("b", directory, env)]
    yield started
    for replica in started:
        replica.stop()


@pytest.fixture(scope="module")
def edge(replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    server = Nginx(tmp_path_factory.mktemp("edge"), replicas[0].address, replicas[1].address)
    yield server
    server.stop()


def sdk(url: str, key: Key) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key.secret, max_retries=0, timeout=120)


def test_a_rolling_restart_under_load_loses_nothing(
    replicas: list[Replica], edge: Nginx, make_key: Any, upstream: Any
) -> None:
    key = make_key("replicas-load")
    auth = {"Authorization": f"Bearer {key.secret}"}
    stop = threading.Event()
    results: list[tuple[str, int, str | None, str]] = []  # (what, status, request id, error code)

    def one(session: httpx.Client, what: str) -> httpx.Response:
        if what == "models":
            return session.get("/v1/models")
        if what == "speech":
            body = {
                "model": "tts-1",
                "voice": "alloy",
                "input": "One moment please.",
                "response_format": "pcm",
            }
            return session.post("/v1/audio/speech", json=body)
        if what == "transcription":
            return session.post(
                "/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"file": ("q.wav", QUESTION)}
            )
        return session.post(
            "/v1/chat/completions",
            json={"model": "fake-llm", "messages": [{"role": "user", "content": "hello"}], "stream": True},
        )

    def client(kinds: list[str]) -> None:
        with httpx.Client(base_url=edge.url, headers=auth, timeout=120) as session:
            n = 0
            while not stop.is_set():
                what = kinds[n % len(kinds)]
                n += 1
                try:
                    response = one(session, what)
                except httpx.HTTPError as exc:
                    results.append((what, 0, None, type(exc).__name__))
                    continue
                code = None
                if response.status_code != 200:
                    code = response.json()["error"]["code"]
                results.append((what, response.status_code, response.headers.get("x-request-id"), code or ""))

    upstream.reset()
    threads = [
        threading.Thread(target=client, args=(kinds,))
        for kinds in (["models", "speech"], ["transcription", "models"], ["chat", "models"])
    ]
    for thread in threads:
        thread.start()
    try:
        while len(results) < 20:
            time.sleep(0.1)
        assert replicas[0].restart() == 0, replicas[0].log()  # drained everything in flight
        # nginx takes the restarted replica back once the fail_timeout of its configuration has
        # passed (a wait for that mechanism, not a bound on anything): then, least connections
        # sends it work among the next requests.
        time.sleep(edge.fail_timeout + 0.5)
        taken_back_at = len(results)
        restarted = replicas[0].directory / f"{replicas[0].name}-{replicas[0].starts}.log"
        while len(results) < taken_back_at + 30 and " /v1/" not in restarted.read_text():
            time.sleep(0.1)
        assert " /v1/" in restarted.read_text(), "the restarted replica got no work"
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)

    statuses = Counter((what, status, code) for what, status, _, code in results)
    # No failure at all: nginx sent what the draining replica refused to the other one.
    assert all(status == 200 for _, status, _, _ in results), statuses
    ids = [request_id for _, _, request_id, _ in results]
    assert None not in ids and len(set(ids)) == len(ids)
    # Every request has its audit row, once: the drained replica wrote its rows before exiting.
    logged = [row.request_id for row in audit_rows(count=len(ids), timeout=60, api_key=key.row)]
    assert sorted(logged) == sorted(ids)
    # Both replicas took work, the restarted one after its restart too.
    for replica in replicas:
        assert replica.served("/v1/") > 0, replica.name


def test_a_voice_chat_continues_on_the_other_replica(
    replicas: list[Replica], make_key: Any, upstream: Any
) -> None:
    key = make_key("replicas-chat")
    first = sdk(replicas[0].url, key).chat.completions.create(
        model="fake-llm",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "hi"}],
    )
    spoken = first.choices[0].message.audio
    assert spoken is not None
    sdk(replicas[1].url, key).chat.completions.create(
        model="fake-llm",
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "audio": {"id": spoken.id}},
            {"role": "user", "content": "and then?"},
        ],
    )
    assert upstream.last_request["json"]["messages"][1] == {"role": "assistant", "content": spoken.transcript}


def test_rate_limits_and_throttles_hold_across_replicas(replicas: list[Replica], make_key: Any) -> None:
    key = make_key("replicas-rate", rate_limit_per_minute=3)
    while time.time() % 60 > 50:  # the six requests within one minute's counter
        time.sleep(1)
    statuses = [
        httpx.get(
            f"{replicas[n % 2].url}/v1/models", headers={"Authorization": f"Bearer {key.secret}"}
        ).status_code
        for n in range(6)
    ]
    assert sorted(statuses) == [200, 200, 200, 429, 429, 429]
    assert statuses[:3] == [200, 200, 200]


def test_a_registry_change_applies_on_both_at_the_next_request(
    replicas: list[Replica], make_key: Any
) -> None:
    key = make_key("replicas-registry")
    headers = {"Authorization": f"Bearer {key.secret}"}
    model = SpeechToTextModel.objects.get(model_id="Systran/faster-whisper-tiny.en")
    alias = f"replica-alias-{key.prefix}"
    model.aliases = [*model.aliases, alias]
    model.save()
    try:
        for replica in replicas:
            assert httpx.get(f"{replica.url}/v1/models/{alias}", headers=headers).status_code == 200
    finally:
        model.aliases = [a for a in model.aliases if a != alias]
        model.save()
    for replica in replicas:
        assert httpx.get(f"{replica.url}/v1/models/{alias}", headers=headers).status_code == 404


def test_a_realtime_session_survives_the_other_replicas_restart(
    replicas: list[Replica], edge: Nginx, make_key: Any
) -> None:
    key = make_key("replicas-realtime")
    other = replicas[1]
    assert other.stop() == 0  # so nginx must put the session on the first replica
    try:
        url = edge.url.replace("http", "ws") + "/v1/realtime?model=echo-model"
        with websockets.sync.client.connect(
            url, additional_headers={"Authorization": f"Bearer {key.secret}"}
        ) as ws:
            events = Events(ws)
            events.until("session.created")
            other.start()
            assert other.restart() == 0  # a graceful restart of the other replica, mid-session
            ws.send(
                json.dumps(
                    {
                        "type": "conversation.item.create",
                        "item": {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "ping"}],
                        },
                    }
                )
            )
            ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["text"]}}))
            done = events.until("response.done")[-1]
            assert done["response"]["status"] == "completed"
    finally:
        if other.process is None or other.process.poll() is not None:
            other.start()


def test_a_keys_realtime_sessions_are_counted_across_replicas(replicas: list[Replica], make_key: Any) -> None:
    key = make_key("replicas-sessions")
    auth = {"Authorization": f"Bearer {key.secret}"}
    urls = [r.url.replace("http", "ws") + "/v1/realtime?model=echo-model" for r in replicas]
    per_key = settings.VOICEPROXY_REALTIME_MAX_SESSIONS_PER_KEY
    held = [websockets.sync.client.connect(urls[n % 2], additional_headers=auth) for n in range(per_key)]
    try:
        for ws in held:
            assert Events(ws).next()["type"] == "session.created"
        for url in urls:  # both replicas know the key has all its sessions, though each holds half
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                websockets.sync.client.connect(url, additional_headers=auth)
            assert refused.value.response.status_code == 429
    finally:
        for ws in held:
            ws.close()
    # A session's row is written after its places are given back: once all four rows are in, a new
    # session must be admitted at once.
    # (The refused handshakes have rows too: only the sessions', answered 200, count here.)
    audit_rows(count=per_key, timeout=60, api_key=key.row, endpoint="/v1/realtime", status_code=200)
    with websockets.sync.client.connect(urls[1], additional_headers=auth) as ws:
        assert Events(ws).next()["type"] == "session.created"


def test_failed_key_throttles_and_client_secrets_hold_across_replicas(
    replicas: list[Replica], make_key: Any
) -> None:
    key = make_key("replicas-secret")
    minted = httpx.post(
        f"{replicas[0].url}/v1/realtime/client_secrets",
        headers={"Authorization": f"Bearer {key.secret}"},
        json={},
    )
    assert minted.status_code == 200, minted.text
    secret = {"Authorization": f"Bearer {minted.json()['value']}"}
    assert httpx.get(f"{replicas[1].url}/v1/models", headers=secret).status_code == 200

    # Failed key checks are counted per client address and minute: from an address of this test's
    # own, alternating replicas, the fifth is refused (the replicas allow 4 a minute).
    client = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
    while time.time() % 60 > 45:  # all five within one minute's counter
        time.sleep(1)
    statuses = []
    for n in range(5):
        with httpx.Client(transport=httpx.HTTPTransport(local_address=client)) as session:
            response = session.get(
                f"{replicas[n % 2].url}/v1/models", headers={"Authorization": "Bearer vp-wrong"}
            )
            statuses.append(response.status_code)
    assert statuses == [401, 401, 401, 401, 429]
