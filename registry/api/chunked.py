"""Request bodies sent without Content-Length (`Transfer-Encoding: chunked`), made readable.

The official Node SDK uploads files as chunked streams (`fs.createReadStream`, `toFile(buffer)`).
daphne decodes the chunks and hands the body over, but DRF (and Django's multipart parser) take a
missing CONTENT_LENGTH for an empty body: the upload reads as "no file". This ASGI middleware
collects such a body first, up to the size limit, and passes it on with its real Content-Length.
A body over VOICEPROXY_MAX_BODY_BYTES is not kept: the request goes on with its length so far and
no body, and ApiGuardMiddleware answers 413 (with an audit row) as for any over-size request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _needs_length(scope: Scope) -> bool:
    if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return False
    names = {name.lower() for name, _ in scope.get("headers", [])}
    return b"content-length" not in names


class ChunkedBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _needs_length(scope):
            await self.app(scope, receive, send)
            return
        limit = settings.VOICEPROXY_MAX_BODY_BYTES
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body ended: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(parts) if size <= limit else b""
        headers = [*scope.get("headers", []), (b"content-length", str(size).encode())]
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect comes

        await self.app({**scope, "headers": headers}, replay, send)
