"""ASGI entry point: `daphne voiceproxy.asgi:application`."""

import logging
import os
import sys
from typing import Any

from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceproxy.settings")

# Built before anything imports models: get_asgi_application() sets Django up.
django_application = get_asgi_application()

from chat.realtime.routing import websocket_urlpatterns  # noqa: E402 - needs Django set up
from registry import db_threads, journal, preload, processes  # noqa: E402 - needs Django set up
from registry.api.chunked import ChunkedBodyMiddleware  # noqa: E402
from registry.api.health import LoopHealth  # noqa: E402
from registry.api.metrics import MetricsEndpoint  # noqa: E402
from voiceproxy.drain import Draining  # noqa: E402


class _DenialResponses:
    """Tells the WebSocket app it may refuse a handshake with an HTTP status of its own (ASGI's
    "websocket.http.response" extension), which daphne learns below."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if _DAPHNE_DENIES:
            scope = {
                **scope,
                "extensions": {**(scope.get("extensions") or {}), "websocket.http.response": {}},
            }
        await self.app(scope, receive, send)


application = Draining(
    ProtocolTypeRouter(
        {
            # /health and /metrics are answered before Django: no audit row, none of its middleware.
            "http": LoopHealth(MetricsEndpoint(ChunkedBodyMiddleware(django_application))),
            # /v1/realtime (chat/realtime/): browsers' Origin checked against ALLOWED_HOSTS.
            "websocket": _DenialResponses(AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns))),
        }
    ),
)

# Rows a process that died before writing them left in its journal: written as this one starts.
db_threads.background.later(journal.recover, what="recover audit rows from the journals of ended processes")


def _report_this_process() -> None:
    """Under daphne, once it serves, this process reports its model cache and takes the admin's
    commands (registry/processes.py; the drain deletes its row). Not when another program imports
    this module (tests, scripts), whose reactor never runs."""
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    reactor.callWhenRunning(processes.heartbeat.start)
    reactor.callWhenRunning(preload.start)  # VOICEPROXY_PRELOAD_MODELS, in a thread of its own


_report_this_process()


def _stop_twisted_parsing_uploads() -> None:
    """Twisted parses every multipart body into `request.args` on the event loop, and daphne never
    reads them (Django parses the body itself, off the loop). Measured in bench/bench_stt.py: 5 ms
    for a 300 KiB upload, 85 ms for 4 MiB, a 250 ms stall of every other request during a 10 MiB
    upload. Twisted's own switch for it is `parsePOSTFormSubmission` (twisted#4519); daphne does not
    pass it, so its request class passes it here."""
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # served by another ASGI server
        return
    if getattr(WebRequest, "_voiceproxy_patched", False):
        return
    original = WebRequest.__init__

    def __init__(self: WebRequest, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        original(self, *args, **kwargs)

    WebRequest.__init__ = __init__
    WebRequest._voiceproxy_patched = True


_stop_twisted_parsing_uploads()


def _access_log_through_logging() -> None:
    """With VOICEPROXY_LOG_FORMAT=json every line the server writes is a JSON object; daphne writes
    its access log to stdout itself (NCSA lines), so here each entry becomes an INFO record of the
    `daphne.access` logger instead, its fields as JSON keys."""
    if settings.VOICEPROXY_LOG_FORMAT != "json":
        return
    try:
        from daphne.access import AccessLogGenerator
    except ImportError:  # served by another ASGI server
        return
    access = logging.getLogger("daphne.access")

    def write_entry(
        self: Any,
        host: str,
        date: Any,
        request: str,
        status: Any = None,
        length: Any = None,
        ident: Any = None,
        user: Any = None,
    ) -> None:
        access.info(
            '%s "%s" %s %s',
            host,
            request,
            status or "-",
            length or "-",
            extra={"client": host, "request_line": request, "status": status, "bytes": length},
        )

    AccessLogGenerator.write_entry = write_entry


_access_log_through_logging()


def _teach_daphne_denial_responses() -> bool:
    """daphne answers every refused WebSocket handshake with 403; a Realtime client must learn
    whether its key (401), its model (403/404) or the server's room (429/503) was the reason.
    ASGI's denial-response extension says how an app gives that status; daphne does not implement
    it, so its reply handler learns it here (the status and a reason phrase; autobahn sends no body)."""
    try:
        from autobahn.websocket.types import ConnectionDeny
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # served by another ASGI server (uvicorn and hypercorn implement it)
        return False
    if getattr(WebSocketProtocol, "_voiceproxy_denials", False):
        return True
    original = WebSocketProtocol.handle_reply

    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "websocket.http.response.start" and hasattr(self, "handshake_deferred"):
            headers = {bytes(k).lower(): bytes(v) for k, v in message.get("headers", [])}
            self._voiceproxy_denial = (
                int(message["status"]),
                headers.get(b"x-reason", b"Refused").decode("latin-1"),
            )
            return
        if kind == "websocket.http.response.body":
            denial = getattr(self, "_voiceproxy_denial", None)
            if denial is None or message.get("more_body") or not hasattr(self, "handshake_deferred"):
                return
            self.handshake_deferred.errback(ConnectionDeny(code=denial[0], reason=denial[1]))
            del self.handshake_deferred
            self.server.protocol_disconnected(self)
            return
        original(self, message)

    WebSocketProtocol.handle_reply = handle_reply
    WebSocketProtocol._voiceproxy_denials = True
    return True


_DAPHNE_DENIES = _teach_daphne_denial_responses()
