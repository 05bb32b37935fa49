"""VOICEPROXY_LOG_FORMAT=json: every line a server logs is one JSON object carrying the request id."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.utils.module_loading import import_string

from bench.harness import speech
from registry.audit import RequestIdFilter
from registry.models import SpeechToTextModel
from tests.conftest import Server, server_env

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # the text format's lines
ACCESS_LINE = re.compile(r'^\S+ - - \[.*\] "')  # daphne's own NCSA access lines


@pytest.fixture(scope="module")
def json_server(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(server_env(VOICEPROXY_LOG_FORMAT="json"), tmp_path_factory.mktemp("json") / "daphne.log")
    yield server
    server.stop()


def records(server: Server, until: str) -> list[dict[str, Any]]:
    """The server's log lines as JSON objects, once a line containing `until` has been written."""
    deadline = time.monotonic() + 30
    while until not in server.log():
        if time.monotonic() > deadline:
            pytest.fail(f"{until!r} never reached the log:\n{server.log()[-3000:]}")
        time.sleep(0.1)
    lines = [line for line in server.log().splitlines() if line.strip()]
    for line in lines:
        assert not TEXT_LINE.match(line) and not ACCESS_LINE.match(line), line
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_every_line_is_json_with_the_request_id(json_server: Server) -> None:
    response = httpx.get(f"{json_server.url}/v1/models", timeout=30)  # no key: Django logs the 401
    assert response.status_code == 401
    request_id = response.headers["x-request-id"]
    logged = records(json_server, request_id)
    assert len(logged) > 3
    for entry in logged:
        assert {"timestamp", "level", "logger", "message", "request_id"} <= entry.keys(), entry
        assert datetime.fromisoformat(entry["timestamp"]).tzinfo is not None
    warning = next(e for e in logged if e["request_id"] == request_id and e["logger"] == "django.request")
    assert warning["level"] == "WARNING" and warning["message"] == "Unauthorized: /v1/models"
    # daphne's access log goes through logging too, its fields as keys.
    access = [
        e for e in logged if e["logger"] == "daphne.access" and e.get("request_line") == "GET /v1/models"
    ]
    assert access and access[-1]["status"] == 401


@pytest.fixture
def unloadable_model(tmp_path: Path) -> Iterator[SpeechToTextModel]:
    row = SpeechToTextModel.objects.create(
        model_id=f"missing-whisper-{uuid.uuid4().hex[:8]}",
        engine="faster-whisper",
        source=str(tmp_path / "not-here"),
        device="cpu",
    )
    yield row
    row.delete()


def test_an_exception_is_logged_with_its_traceback_and_request_id(
    json_server: Server, api_key: Any, unloadable_model: SpeechToTextModel
) -> None:
    response = httpx.post(
        f"{json_server.url}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {api_key.secret}"},
        data={"model": unloadable_model.model_id},
        files={"file": ("hello.wav", speech.speech("hello world"), "audio/wav")},
        timeout=60,
    )
    assert response.status_code == 503, response.text
    request_id = response.headers["x-request-id"]
    failed = [
        e
        for e in records(json_server, f"loading {unloadable_model.model_id} failed")
        if e["message"] == f"loading {unloadable_model.model_id} failed"
    ]
    assert failed and failed[0]["level"] == "ERROR" and failed[0]["request_id"] == request_id
    assert "Traceback (most recent call last)" in failed[0]["exception"]


def test_the_json_formatter_is_the_settings_one() -> None:
    config = dict(settings.LOGGING["formatters"]["json"])
    formatter = import_string(config.pop("()"))(**config)
    record = logging.LogRecord("voiceproxy.test", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        record.exc_info = sys.exc_info()
    RequestIdFilter().filter(record)
    entry = json.loads(formatter.format(record))
    assert (
        entry["message"] == "failed x" and entry["level"] == "ERROR" and entry["logger"] == "voiceproxy.test"
    )
    assert entry["request_id"] == "-" and "ZeroDivisionError: boom" in entry["exception"]
