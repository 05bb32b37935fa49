"""The Realtime edge: a Channels consumer that checks the handshake, then relays JSON frames.

A refused handshake is answered with the error's HTTP status (401 bad key, 403 model not allowed,
404 unknown model, 429/503 no room) where the server supports ASGI's WebSocket denial response
(daphne does, as patched in voiceproxy/asgi.py), else with a plain 403; either way the attempt has
its audit row. Everything after `accept()` is chat/realtime/session.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from chat.realtime import admission
from chat.realtime.session import RealtimeSession
from registry import audit
from registry.errors import InvalidRequest, OpenAIError, ShuttingDown
from voiceproxy import drain

logger = logging.getLogger(__name__)


def _phrase(message: str) -> str:
    """An HTTP reason phrase: one line of printable ASCII."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in message)[:200] or "Refused"


class RealtimeConsumer(AsyncWebsocketConsumer):
    session: RealtimeSession | None = None
    record: audit.AuditRecord | None = None

    async def connect(self) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope.get("headers", [])}
        self.record = record = audit.open_record(
            method="GET",
            endpoint="/v1/realtime",
            client_request_id=audit.client_request_id(headers.get("x-request-id", "")),
        )
        client = (self.scope.get("client") or ["", 0])[0] or ""
        try:
            host, _ = split_domain_port(headers.get("host", ""))
            if not validate_host(host, settings.ALLOWED_HOSTS):
                raise InvalidRequest(f"Invalid host header: '{host}'.", code="disallowed_host")
            if drain.draining():
                raise ShuttingDown("The server is shutting down; retry.", retry_after=1)
            admitted = await admission.admit(
                headers=headers,
                subprotocols=list(self.scope.get("subprotocols") or []),
                query=dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1"))),
                client=client,
            )
        except Exception as exc:
            error = record.fail(exc)
            if not isinstance(exc, OpenAIError):
                logger.exception("realtime handshake failed")
            record.finish(error.status)
            await self._deny(error)
            return
        if admitted.config.model:
            record.add_model(admitted.config.model)
        await self.accept(subprotocol=admitted.subprotocol)
        # The session's row stays open until the socket closes, but is no longer this context's
        # current record: events handled here must see registry changes (a revoked key, a new
        # model) as any request would, not the registry as it was at the handshake.
        audit.leave()
        self.session = RealtimeSession(
            admitted=admitted, record=record, send=self._send_event, close=self._close
        )
        try:
            await self.session.start()
        except Exception as exc:  # a client secret's session that no longer applies, say
            if not isinstance(exc, OpenAIError):
                logger.exception("realtime session failed to start")
            await self.session.error(record.fail(exc))
            await self._close(1008)

    async def _deny(self, error: OpenAIError) -> None:
        if "websocket.http.response" in (self.scope.get("extensions") or {}):
            body = json.dumps(error.body()).encode()
            await self.base_send(
                {
                    "type": "websocket.http.response.start",
                    "status": error.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"x-reason", _phrase(error.message).encode()),
                    ],
                }
            )
            await self.base_send({"type": "websocket.http.response.body", "body": body})
        else:
            await self.close()

    async def _send_event(self, event: dict[str, Any]) -> None:
        text = json.dumps(event)
        if self.record is not None:
            self.record.bytes_out += len(text)
        await self.send(text_data=text)

    async def _close(self, code: int) -> None:
        await self.close(code)
        await self.disconnect(code)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is None:
            return
        data = text_data if text_data is not None else bytes_data or b""
        if self.record is not None:
            self.record.bytes_in += len(data)
        await self.session.receive(data)

    async def disconnect(self, code: int) -> None:
        if self.session is not None:
            await self.session.close()
