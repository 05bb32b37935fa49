"""/v1/ middleware: the audit record of each request, and the guards Django's own would apply.

`AuditMiddleware` opens the request's audit record (registry/audit.py) with its `x-request-id`,
and finishes it when the response is complete: at once for a plain body, after the last byte of a
stream, or when the client goes away. `ApiGuardMiddleware` does what Django's Common and Security
middleware would (they stay off /v1/, registry/api/site_middleware.py): ALLOWED_HOSTS, the
body-size limit before anything reads the body, `X-Content-Type-Options` and `Content-Length`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse

from registry import audit
from registry.api import is_api
from registry.api.errors import error_response
from registry.errors import PayloadTooLarge, ShuttingDown
from voiceproxy import drain

GetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def content_length(request: HttpRequest) -> int:
    try:
        return max(0, int(request.headers.get("content-length") or 0))
    except ValueError:
        return 0


class _ApiMiddleware:
    async_capable = True
    sync_capable = False

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if not is_api(request.path):
            return await self.get_response(request)
        return await self.api_call(request)

    async def api_call(self, request: HttpRequest) -> HttpResponseBase:
        raise NotImplementedError


class AuditMiddleware(_ApiMiddleware):
    async def api_call(self, request: HttpRequest) -> HttpResponseBase:
        # Not reset afterwards: a streamed body is produced later in this same task and its
        # services still write to the record.
        record = audit.open_record(
            method=request.method or "",
            endpoint=request.path,
            # The server names every request (ids are unique in the log); a client's own is kept beside.
            client_request_id=audit.client_request_id(request.headers.get("x-request-id", "")),
        )
        record.bytes_in = content_length(request)
        try:
            response = await self.get_response(request)
        except asyncio.CancelledError:
            # The client hung up before the response began (Django cancels the view): the
            # request still gets its row.
            record.usage.client_disconnected = True
            record.finish(audit.CLIENT_CLOSED)
            raise
        response["x-request-id"] = record.request_id
        error = getattr(response, "openai_error", None)
        if error is not None:
            record.error = error
        if isinstance(response, StreamingHttpResponse):
            response.streaming_content = self._watch(response.streaming_content, response, record)
        else:
            record.bytes_out = len(getattr(response, "content", b""))
            record.finish(response.status_code)
        return response

    async def _watch(
        self, content: AsyncIterator[bytes], response: StreamingHttpResponse, record: audit.AuditRecord
    ) -> AsyncIterator[bytes]:
        record.usage.streamed = True
        try:
            async for chunk in content:
                record.bytes_out += len(chunk)
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            record.usage.client_disconnected = True
            raise
        finally:
            # The real outcome: a stream that ended in an error event is logged with the error's
            # status, though its headers said 200. Handed over, not awaited: the last byte is not
            # held back by the INSERT.
            failed = record.error is not None and response.status_code < 400
            record.finish(record.error.status if failed and record.error else response.status_code)


class ApiGuardMiddleware(_ApiMiddleware):
    async def api_call(self, request: HttpRequest) -> HttpResponseBase:
        try:
            request.get_host()  # checks ALLOWED_HOSTS
        except DisallowedHost as exc:
            response: HttpResponseBase = error_response(exc)
        else:
            size = content_length(request)
            if drain.draining():  # arrived on a kept-alive connection after SIGTERM
                response = error_response(ShuttingDown("The server is shutting down; retry.", retry_after=1))
                response["Connection"] = "close"
            elif size > settings.VOICEPROXY_MAX_BODY_BYTES:
                response = error_response(
                    PayloadTooLarge(
                        f"The request body is {size} bytes; this server accepts at most "
                        f"{settings.VOICEPROXY_MAX_BODY_BYTES}."
                    )
                )
            else:
                response = await self.get_response(request)
        response.setdefault("X-Content-Type-Options", "nosniff")
        if not response.streaming and not response.has_header("Content-Length"):
            response["Content-Length"] = str(len(getattr(response, "content", b"")))
        return response
