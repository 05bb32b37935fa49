"""`GET /metrics`: the Prometheus scrape, answered before Django (as `/health` is).

Open to clients whose address is in VOICEPROXY_METRICS_ALLOW (IPs or networks; loopback by
default), and to any client sending `Authorization: Bearer <VOICEPROXY_METRICS_TOKEN>` when that
token is set (compared in constant time). Anyone else gets 403, or 401 for a wrong token, in the
OpenAI error shape. The address is the ASGI scope's client: behind nginx, daphne's
`--proxy-headers` has already made it the real client's. Not under /v1/, so never audited.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from registry import addresses, metrics
from registry.errors import AuthenticationFailed, MethodNotAllowed, OpenAIError, PermissionDenied


class MetricsEndpoint:
    """ASGI middleware answering `/metrics`; everything else goes on to `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        try:  # a bad entry stops the start
            self.allow = addresses.networks(settings.VOICEPROXY_METRICS_ALLOW)
        except ValueError as exc:
            raise ImproperlyConfigured(f"VOICEPROXY_METRICS_ALLOW: {exc}") from exc
        self.token = settings.VOICEPROXY_METRICS_TOKEN.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics":
            await self.app(scope, receive, send)
            return
        headers = {bytes(k).lower(): bytes(v) for k, v in scope.get("headers") or []}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await _send_error(send, refusal)
            return
        accept = headers.get(b"accept", b"").decode("latin-1")
        # Reads every process's files: off the event loop, and off the inference pool (a busy pool
        # must not make the scrape that would show it fail).
        body, content_type = await sync_to_async(metrics.exposition, thread_sensitive=False)(accept)
        response_headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})

    def refusal(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> OpenAIError | None:
        """Why this scrape is refused, or None when it may have the metrics."""
        if scope["method"] not in ("GET", "HEAD"):
            return MethodNotAllowed(f"Method {scope['method']} not allowed on /metrics; use GET.")
        client = scope.get("client")
        if client and addresses.allowed(str(client[0]), self.allow):
            return None
        scheme, _, supplied = headers.get(b"authorization", b"").partition(b" ")
        if self.token and scheme.lower() == b"bearer" and supplied:
            if hmac.compare_digest(supplied.strip(), self.token):
                return None
            return AuthenticationFailed("The metrics token is not valid.", code="invalid_metrics_token")
        return PermissionDenied(
            "Metrics are open to the addresses in VOICEPROXY_METRICS_ALLOW, or with the bearer token"
            " in VOICEPROXY_METRICS_TOKEN.",
            code="metrics_not_allowed",
        )


async def _send_error(send: Any, error: OpenAIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    if isinstance(error, AuthenticationFailed):
        headers.append((b"www-authenticate", b'Bearer realm="metrics"'))
    if isinstance(error, MethodNotAllowed):
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
