"""Key lifecycle through the official SDK: create, use, revoke, expire, scope, rate; and the audit rows."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import timedelta

import httpx
import openai
import pytest
import redis
from django.utils import timezone

from registry.models import ApiKey
from tests.audit_log import audit_row, audit_rows, last_used
from tests.conftest import ROOT, Server, server_env


def test_models_list_shows_speech_models_aliases_and_chat_models(client):
    ids = {m.id for m in client.models.list()}
    assert {"Systran/faster-whisper-tiny.en", "whisper-1", "rhasspy/piper-en_US-joe-medium", "tts-1"} <= ids
    assert "fake-llm" in ids
    model = client.models.retrieve("whisper-1")
    assert model.id == "whisper-1" and model.object == "model" and model.owned_by == "voiceproxy"


def test_model_id_with_a_slash_is_retrievable(client):
    assert client.models.retrieve("Systran/faster-whisper-tiny.en").id == "Systran/faster-whisper-tiny.en"


def test_unknown_model_is_a_404_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"
    assert caught.value.body["param"] == "model"


def test_missing_key_is_401_and_logged(gateway):
    response = httpx.get(f"{gateway.url}/v1/models")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key"
    row = audit_row(response.headers["x-request-id"])
    assert row.status_code == 401 and row.key_prefix == "" and row.error_code == "invalid_api_key"


def test_unknown_key_is_401_and_logged_by_prefix_only(openai_client):
    client = openai_client(api_key="vp-notARealKeyButLongEnough1234567890")
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key"
    row = audit_row(caught.value.response.headers["x-request-id"])
    assert row.key_prefix == "vp-notARealK"
    assert "notARealKeyButLongEnough" not in row.error_message


def test_revoked_key_gets_401_and_an_audit_row(make_key, openai_client):
    key = make_key("revoked")
    client = openai_client(api_key=key.secret)
    client.models.list()
    ApiKey.objects.filter(pk=key.row.pk).update(revoked_at=timezone.now())
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "invalid_api_key"
    assert "revoked" in caught.value.message
    assert audit_rows(status_code=401, key_prefix=key.prefix, api_key=key.row)


def test_expired_key_gets_401(make_key, openai_client):
    key = make_key("expired", expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(api_key=key.secret).models.list()
    assert "expired" in caught.value.message


def test_key_not_yet_expired_works_and_records_last_used(make_key, openai_client):
    key = make_key("fresh", expires_at=timezone.now() + timedelta(days=1))
    assert key.row.last_used is None
    openai_client(api_key=key.secret).models.list()
    assert last_used(key.row) > timezone.now() - timedelta(minutes=1)


def test_scoped_key_sees_only_its_models(make_key, openai_client):
    key = make_key("scoped", allowed_models=["whisper-1"])
    client = openai_client(api_key=key.secret)
    ids = {m.id for m in client.models.list()}
    assert "whisper-1" in ids and "Systran/faster-whisper-tiny.en" in ids
    assert "tts-1" not in ids and "fake-llm" not in ids
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("tts-1")


def test_rate_limit_is_429_with_retry_after(make_key, openai_client):
    key = make_key("limited", rate_limit_per_minute=2)
    client = openai_client(api_key=key.secret)
    # Keep all three requests inside one minute window.
    if time.time() % 60 > 55:
        time.sleep(61 - time.time() % 60)
    client.models.list()
    client.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()
    assert caught.value.code == "rate_limit_exceeded"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 60
    assert len(audit_rows(key_prefix=key.prefix, status_code=429)) == 1


def test_every_request_gets_a_request_id_matching_its_audit_row(http):
    response = http.get("/v1/models")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    row = audit_row(request_id)
    assert row.endpoint == "/v1/models" and row.method == "GET" and row.status_code == 200
    assert row.bytes_out == len(response.content)
    assert row.duration_ms is not None and row.duration_ms >= 0


def test_a_client_supplied_request_id_is_kept_beside_the_servers(http):
    trace = f"trace-{uuid.uuid4().hex[:12]}"
    ids = {http.get("/v1/models", headers={"x-request-id": trace}).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and trace not in ids  # the server names each request, uniquely
    rows = audit_rows(client_request_id=trace, count=3)
    assert {r.request_id for r in rows} == ids


def test_createapikey_prints_only_a_working_secret(gateway, openai_client):
    env = server_env()
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "createapikey",
            "from-cli",
            "--models",
            "whisper-1",
            "--expires-days",
            "2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vp-")
    secret = lines[0]
    row = ApiKey.objects.get(prefix=secret[:12])
    assert row.allowed_models == ["whisper-1"]
    assert row.expires_at is not None and row.expires_at > timezone.now() + timedelta(days=1)
    assert secret not in {row.secret_hash, row.prefix}
    assert {m.id for m in openai_client(api_key=secret).models.list()} >= {"whisper-1"}


@pytest.fixture(scope="module")
def redis_servers(gateway, tmp_path_factory):
    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url).flushdb()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    servers = [
        Server(server_env(REDIS_URL=url), tmp_path_factory.mktemp(f"redis{i}") / "daphne.log")
        for i in range(2)
    ]
    yield servers
    for server in servers:
        server.stop()


def test_rate_limit_is_shared_by_processes_through_redis(redis_servers, make_key):
    key = make_key("shared-limit", rate_limit_per_minute=3)
    if time.time() % 60 > 55:
        time.sleep(61 - time.time() % 60)
    statuses = []
    for i in range(4):
        server = redis_servers[i % 2]
        response = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key.secret}"})
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    ready = httpx.get(f"{redis_servers[0].url}/health/ready").json()
    assert ready == {"status": "ok", "checks": {"database": True, "redis": True}}


def test_anonymous_access_only_when_the_setting_allows_it_and_only_for_allowed_hosts(
    gateway, tmp_path_factory
):
    assert httpx.get(f"{gateway.url}/v1/models").status_code == 401  # the default: off
    server = Server(
        server_env(VOICEPROXY_ALLOW_ANONYMOUS="true", VOICEPROXY_ALLOWED_HOSTS="127.0.0.1,localhost"),
        tmp_path_factory.mktemp("anon") / "daphne.log",
    )
    try:
        response = httpx.get(f"{server.url}/v1/models")
        assert response.status_code == 200 and response.json()["object"] == "list"
        row = audit_row(response.headers["x-request-id"])
        assert row.status_code == 200 and row.key_prefix == ""
        # A key that is sent is still checked.
        assert (
            httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer vp-wrong"}).status_code
            == 401
        )
        # A page a browser loaded from another name that resolves here (DNS rebinding) gets nothing.
        foreign = httpx.get(f"{server.url}/v1/models", headers={"Host": "evil.example"})
        assert foreign.status_code == 400 and foreign.json()["error"]["code"] == "invalid_host"
        assert "evil.example" not in foreign.text
        assert audit_row(foreign.headers["x-request-id"]).status_code == 400
    finally:
        server.stop()


@pytest.fixture(scope="module")
def throttled_gateway(gateway, tmp_path_factory):
    server = Server(
        server_env(VOICEPROXY_AUTH_FAILURES_PER_MINUTE="5"),
        tmp_path_factory.mktemp("throttled") / "daphne.log",
    )
    yield server
    server.stop()


def test_failed_key_checks_are_throttled_per_client_address(throttled_gateway, api_key):
    import random

    # A loopback address of its own, so no other test's failures count against it.
    address = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    guesser = httpx.Client(
        base_url=throttled_gateway.url, transport=httpx.HTTPTransport(local_address=address)
    )
    if time.time() % 60 > 55:  # the seven checks within one minute's counter
        time.sleep(61 - time.time() % 60)
    with guesser:
        responses = [
            guesser.get("/v1/models", headers={"Authorization": "Bearer vp-guess"}) for _ in range(7)
        ]
        valid_from_there = guesser.get("/v1/models", headers={"Authorization": f"Bearer {api_key.secret}"})
    assert [r.status_code for r in responses] == [401] * 5 + [429] * 2
    refused = responses[-1]
    assert (
        refused.json()["error"]["code"] == "rate_limit_exceeded" and int(refused.headers["retry-after"]) >= 1
    )
    assert audit_row(refused.headers["x-request-id"]).status_code == 429
    assert valid_from_there.status_code == 429  # the address, not the key, is throttled
    # Another address is served as before. (Also one of its own: with Redis, 127.0.0.1's counter
    # holds every other test's wrong keys too, and this server refuses after five.)
    elsewhere = f"127.{random.randint(1, 250)}.{random.randint(1, 250)}.1"
    transport = httpx.HTTPTransport(local_address=elsewhere)
    with httpx.Client(base_url=throttled_gateway.url, transport=transport) as other:
        assert (
            other.get("/v1/models", headers={"Authorization": f"Bearer {api_key.secret}"}).status_code == 200
        )
