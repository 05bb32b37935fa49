"""OpenAPI details drf-spectacular cannot infer: our Bearer API-key scheme."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "registry.api.auth.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A voiceproxy API key: `Authorization: Bearer vp-...`.",
        }


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}
_STATUSES = {
    "400": "Invalid request: a parameter, the body or the audio (the error names the `param`).",
    "401": "Missing, unknown, revoked or expired API key (or client secret).",
    "403": "The key may not use this model.",
    "404": "Unknown model, voice or audio id.",
    "413": "The body or the audio is larger than this server accepts.",
    "415": "The body's content type is not one this endpoint reads.",
    "429": "The key's rate limit, or too many failed key checks from this address (`Retry-After`).",
    "500": "An unexpected failure (logged with the request id).",
    "502": "The upstream LLM failed or could not be reached.",
    "503": "The server is at capacity, a model could not be loaded, or it is shutting down (`Retry-After`).",
    "504": "The upstream LLM did not answer in time.",
}
_REALTIME = {
    "get": {
        "operationId": "realtimeConnect",
        "summary": "The Realtime API: a WebSocket (GET with Upgrade: websocket)",
        "description": (
            "OpenAI's GA Realtime protocol: JSON events both ways, `session.created` first. Authenticate "
            "with `Authorization: Bearer`, the subprotocol `openai-insecure-api-key.KEY`, or a client "
            "secret from `POST /v1/realtime/client_secrets`. See README's Realtime section for the events."
        ),
        "tags": ["realtime"],
        "parameters": [
            {
                "name": "model",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "The chat model that answers (required unless a client secret names it).",
            },
            {
                "name": "intent",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": ["transcription"]},
                "description": "`transcription`: turns are transcribed, never answered.",
            },
        ],  # fmt: skip
        "security": [{"ApiKeyAuth": []}],
        "responses": {"101": {"description": "Switching Protocols: the session is open."}},
    }
}


def _statuses(path: str, method: str) -> list[str]:
    statuses = ["400", "401", "403", "404", "429", "500", "503"]
    if method == "post":
        statuses += ["413", "415"]
    if path.endswith("/chat/completions"):
        statuses += ["502", "504"]
    return sorted(statuses)


def document_errors(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every /v1/ operation's error statuses, in the one error
    shape, and the Realtime WebSocket endpoint, which has no DRF view to describe it."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR_SCHEMA
    paths = result.setdefault("paths", {})
    paths["/v1/realtime"] = _REALTIME
    for path, operations in paths.items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in _statuses(path, method):
                responses.setdefault(
                    status,
                    {
                        "description": _STATUSES[status],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                )
    return result
