"""Graceful shutdown: on SIGTERM the server drains before it exits.

1. It stops accepting: the listening sockets close (a load balancer's next connect goes elsewhere),
   `/health/ready` answers 503, and a request that still arrives on an open keep-alive connection
   gets a 503 with Retry-After (audited like any other).
2. Requests in flight, streams included, finish: for up to VOICEPROXY_DRAIN_SECONDS. Work whose
   client has gone is dropped as always (Django cancels the request, and the pool its queued calls).
3. Every audit row is written (the background database thread is flushed), and the process
   exits: 0 when everything in flight finished, 1 when the drain time cut requests (their rows are
   in the audit journal, logged as interrupted at the next start). A second SIGTERM, or SIGINT
   (Ctrl-C), skips the wait.

Installed by `Draining` (voiceproxy/asgi.py) when the server is daphne, whether started as README
says or by a process manager's plain `daphne voiceproxy.asgi:application`; under another ASGI
server (or in tests) `Draining` only counts requests and the flag is set by `begin()`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import sys
import time
from types import FrameType
from typing import Any, cast

from django.conf import settings

from registry import db_threads, metrics, processes
from registry.journal import journal

logger = logging.getLogger(__name__)

Scope = dict[str, Any]

_state = {"draining": False, "in_flight": 0}
_idle: asyncio.Event | None = None  # set when draining and nothing is in flight any more


def draining() -> bool:
    return bool(_state["draining"])


def in_flight() -> int:
    return int(_state["in_flight"])


class Draining:
    """ASGI middleware: counts the HTTP requests and WebSocket sessions in flight, and installs
    the SIGTERM handler when running under daphne's reactor."""

    def __init__(self, app: Any) -> None:
        self.app = app
        _install_when_running()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        # A Realtime session (a WebSocket) counts too: it ends itself once draining begins
        # (chat/realtime/session.py), after the response it is giving.
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        _state["in_flight"] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            _state["in_flight"] -= 1
            if _idle is not None and not _state["in_flight"]:
                _idle.set()


def _install_when_running() -> None:
    if "twisted.internet.reactor" not in sys.modules:
        return  # not daphne: its process manager's own signal handling applies
    from twisted.internet import reactor

    reactor.callWhenRunning(_install)  # after the reactor has installed its own handlers


def _install() -> None:
    loop = asyncio.get_event_loop()

    def handle(signum: int, frame: FrameType | None) -> None:
        if draining() or signum == signal.SIGINT:  # Ctrl-C, or a second SIGTERM: stop now
            loop.call_soon_threadsafe(_exit, 1 if in_flight() else 0, 5.0, context=contextvars.Context())
            return
        begin()
        loop.call_soon_threadsafe(lambda: loop.create_task(_drain()), context=contextvars.Context())

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def begin() -> None:
    """Refuse new work from now on (what SIGTERM does first)."""
    _state["draining"] = True


async def _drain() -> None:
    global _idle
    _idle = asyncio.Event()  # (the signal handler has already refused new work: begin())
    if not in_flight():
        _idle.set()
    closed = _stop_listening()
    logger.warning(
        "SIGTERM: draining %d requests for up to %d s (%d listening sockets closed)",
        in_flight(),
        settings.VOICEPROXY_DRAIN_SECONDS,
        closed,
    )
    deadline = time.monotonic() + settings.VOICEPROXY_DRAIN_SECONDS
    try:
        await asyncio.wait_for(_idle.wait(), settings.VOICEPROXY_DRAIN_SECONDS)
    except TimeoutError:
        logger.warning("drain time is up: %d requests still in flight are cut", in_flight())
    # A response is done for the app when its last byte is handed to daphne; Twisted may still hold
    # some for a slow client: let it leave (within the drain time, and at least a second).
    deadline = max(deadline, time.monotonic() + 1.0)
    while _unsent() and time.monotonic() < deadline:  # noqa: ASYNC110 - Twisted has no event for it
        await asyncio.sleep(0.05)
    _exit(1 if in_flight() or _unsent() else 0, 10.0)


def _exit(code: int, flush_timeout: float) -> None:
    """Write every audit row there is, then end the process at once.

    Not through the reactor's stop: daphne would cancel what is still in flight while inference
    threads run, and tearing that down has crashed the interpreter (a segfault in the garbage
    collector, reproduced with streamed voice chats cut mid-synthesis). The audit journal keeps the
    rows of requests cut here (they are logged as interrupted when the server starts again).
    """
    processes.heartbeat.stop()  # this process's row leaves the admin's model cache page
    try:
        db_threads.background.flush(flush_timeout)
    except Exception:  # noqa: BLE001 - a database that hangs must not keep the process alive
        logger.exception("could not write every audit row before exiting; the journal keeps them")
    journal.close()
    metrics.process_exiting()  # os._exit skips atexit: this process's live gauges leave the sum here
    logger.warning("drained; stopping" if code == 0 else "stopping with requests cut short")
    logging.shutdown()
    os._exit(code)


def _unsent() -> bool:
    """Whether a client connection still has bytes waiting to be written."""
    from twisted.internet import reactor, tcp

    writers: list[object] = cast(Any, reactor).getWriters()
    return any(isinstance(w, tcp.Server) for w in writers)


def _stop_listening() -> int:
    """Close daphne's listening sockets; returns how many."""
    from twisted.internet import reactor, tcp, unix

    readers: list[object] = cast(Any, reactor).getReaders()
    ports = [r for r in readers if isinstance(r, tcp.Port | unix.Port)]
    for port in ports:
        port.stopListening()
    return len(ports)
