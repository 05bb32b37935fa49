"""Hostile strings and shapes: NUL bytes, lone surrogates and deep JSON are a 400 naming the
parameter, never a 500, never routed anywhere, and never cost the request its audit row."""

from __future__ import annotations

import json

import pytest

from bench.harness.speech import speech
from tests.audit_log import audit_row


def post_raw(http, path: str, body: str):
    return http.post(path, content=body.encode(), headers={"content-type": "application/json"})


def assert_400_with_row(response, param: str | None):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    row = audit_row(response.headers["x-request-id"])
    assert row.status_code == 400 and row.error_message == error["message"]


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800"])
@pytest.mark.parametrize(
    ("path", "template", "param"),
    [
        (
            "/v1/chat/completions",
            '{"model": "fake%s", "messages": [{"role": "user", "content": "hi"}]}',
            "model",
        ),
        (
            "/v1/chat/completions",
            '{"model": "fake-llm", "messages": [{"role": "user", "content": "hi %s"}]}',
            "messages[0].content",
        ),
        (
            "/v1/chat/completions",
            '{"model": "fake-llm", "transcription_model": "w%s", '
            '"messages": [{"role": "user", "content": "x"}]}',
            "transcription_model",
        ),
        (
            "/v1/chat/completions",
            '{"model": "fake-llm", "modalities": ["text", "audio"], "audio": {"voice": {"id": "a%s"}, '
            '"format": "wav"}, "messages": [{"role": "user", "content": "x"}]}',
            "audio.voice.id",
        ),
        (
            "/v1/chat/completions",
            '{"model": "fake-llm", "messages": [{"role": "assistant", "audio": {"id": "audio_%s"}}, '
            '{"role": "user", "content": "x"}]}',
            "messages[0].audio.id",
        ),
        ("/v1/audio/speech", '{"model": "tts-1", "voice": "alloy%s", "input": "hi"}', "voice"),
        ("/v1/audio/speech", '{"model": "tts-1%s", "voice": "alloy", "input": "hi"}', "model"),
    ],
)
def test_nul_and_lone_surrogates_in_json_are_a_400_naming_the_param(
    http, upstream, path, template, param, escape
):
    before = len(upstream.requests)
    response = post_raw(http, path, template % escape)
    assert_400_with_row(response, param)
    assert len(upstream.requests) == before  # never routed anywhere


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/audio/speech"])
def test_json_nested_a_thousand_deep_is_a_400(http, path):
    deep = "[" * 1000 + "]" * 1000
    response = post_raw(
        http, path, '{"model": "x", "input": "hi", "voice": "alloy", "messages": ' + deep + "}"
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_body"
    assert audit_row(response.headers["x-request-id"]).status_code == 400
    nested = post_raw(
        http, path, json.dumps({"model": "x", "tools": [[[[[[[[[]]]]]]]]], "extra": {"a": {"b": 1}}})
    )
    assert nested.status_code != 500


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("response_format", "json\x00", "response_format"),
        ("timestamp_granularities[]", "\x00", "timestamp_granularities[0]"),
        ("language", "e\x00n", "language"),
    ],
)
def test_nul_in_multipart_fields_is_a_400_with_a_row(http, field, value, param):
    response = http.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1", field: value},
        files={"file": ("a.wav", speech("Hello there."))},
    )
    assert_400_with_row(response, param)


def test_a_deep_chunking_strategy_is_a_400(http):
    response = http.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1", "chunking_strategy": "[" * 5000 + "]" * 5000},
        files={"file": ("a.wav", speech("Hello there."))},
    )
    assert response.status_code == 400 and audit_row(response.headers["x-request-id"]).status_code == 400


@pytest.mark.parametrize(
    "path", ["/v1/models/abc%00def", "/v1/audio/voices?model=a%00b", "/v1/models/x%ED%A0%80y"]
)
def test_nul_in_the_url_costs_no_audit_row(http, path):
    response = http.get(path)
    assert response.status_code in (400, 404), response.text
    row = audit_row(response.headers["x-request-id"])
    assert row.status_code == response.status_code and "\x00" not in row.endpoint + row.error_message
