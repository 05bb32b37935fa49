"""Every failure under /v1/ is OpenAI's error shape with the right status, and is in the audit log."""

from __future__ import annotations

import httpx

from tests.audit_log import audit_row


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    row = audit_row(response.headers["x-request-id"])
    assert row.status_code == status
    assert row.error_message == body["error"]["message"]
    return body["error"]


def test_unknown_route_is_a_404(http):
    assert_openai_error(http.get("/v1/does/not/exist"), 404, "not_found")


def test_unknown_route_without_key_is_still_json(gateway):
    response = httpx.post(f"{gateway.url}/v1/nothing-here")
    assert_openai_error(response, 404)


def test_wrong_method_is_a_405(http):
    assert_openai_error(http.delete("/v1/models"), 405, "method_not_allowed")


def test_body_over_the_limit_is_a_413(http):
    response = http.post(
        "/v1/models", content=b"x" * (26 * 1024 * 1024 + 1), headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 413, "payload_too_large")


def test_health_endpoints(gateway):
    assert httpx.get(f"{gateway.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] is True


def test_openapi_schema_lists_our_endpoints(gateway):
    response = httpx.get(f"{gateway.url}/v1/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/v1/models" in schema["paths"] and "/v1/models/{model_id}" in schema["paths"]
    assert schema["components"]["securitySchemes"]["ApiKeyAuth"]["scheme"] == "bearer"
    speech = schema["paths"]["/v1/audio/speech"]["post"]["responses"]
    assert {"200", "400", "401", "413", "429", "503"} <= speech.keys()
    assert speech["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert {"502", "504"} <= schema["paths"]["/v1/chat/completions"]["post"]["responses"].keys()
    assert "101" in schema["paths"]["/v1/realtime"]["get"]["responses"]
