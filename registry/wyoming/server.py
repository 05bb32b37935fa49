"""The Wyoming TCP server: who may connect, announcing it on the LAN, and stopping cleanly.

Wyoming has no authentication, so the server answers only the client addresses allowed
(VOICEPROXY_WYOMING_ALLOW or `--allow`: IPs or networks; loopback by default). Anyone else gets an
`error` event and the connection is closed; the refusal is audited (`wyoming:connect`, 403).
On SIGTERM or SIGINT it stops listening, lets requests under way finish (up to `drain_seconds`),
writes every audit row, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from wyoming.error import Error
from wyoming.event import async_write_event

from registry import audit, db_threads
from registry.addresses import Network, allowed
from registry.errors import OpenAIError, PermissionDenied, ServerBusy
from registry.wyoming.handler import METHOD, WyomingHandler

logger = logging.getLogger(__name__)

_ANY = ("0.0.0.0", "::")  # noqa: S104 - an address to compare with, not to bind
REFUSAL_LINGER_S = 2.0
MAX_CONNECTIONS = 64  # clients served at once; more are refused with an `error` event


class WyomingServer:
    def __init__(self, *, host: str, port: int, allow: list[Network], drain_seconds: float = 30.0) -> None:
        self.host, self.port, self.allow, self.drain_seconds = host, port, allow, drain_seconds
        self.handlers: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connected, host=self.host, port=self.port)
        sockets: list[Any] = list(self.server.sockets or ())
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]
        logger.info(
            "Wyoming server listening on %s:%s (clients allowed: %s)", self.host, self.port, self.allow
        )

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        if not allowed(client, self.allow):
            why: OpenAIError = PermissionDenied(
                f"The client address {client} is not allowed.", code="client_not_allowed"
            )
            await self._refuse(reader, writer, client, why)
            return
        if len(self.handlers) >= MAX_CONNECTIONS:
            why = ServerBusy(
                f"This server holds its maximum of {MAX_CONNECTIONS} Wyoming connections; retry."
            )
            await self._refuse(reader, writer, client, why)
            return
        handler = WyomingHandler(reader, writer, client=client)
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - asyncio runs this callback as a task
        self.handlers.add(task)
        try:
            await handler.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-event
        finally:
            self.handlers.discard(task)

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str, why: OpenAIError
    ) -> None:
        logger.warning("Wyoming connection from %s refused: %s", client, why.message)
        with audit.scope(method=METHOD, endpoint="wyoming:connect") as record:
            error = record.fail(why)
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await async_write_event(Error(text=error.message, code=str(error.code)).event(), writer)
            writer.write_eof()
            # What the client sent meanwhile is read (a little, briefly) before closing: closing
            # with unread data would reset the connection and could lose the error on its way.
            async with asyncio.timeout(REFUSAL_LINGER_S):
                while await reader.read(65536):
                    pass
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def serve(self, *, zeroconf_name: str | None = None) -> None:
        """Run until SIGTERM or SIGINT, then drain."""
        await self.start()
        assert self.server is not None  # noqa: S101 - start() sets it
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        announcer = None
        if zeroconf_name is not None:
            announcer = await _announce(zeroconf_name, self.host, self.port)
        try:
            await stop.wait()
        finally:
            await self.stop()
            if announcer is not None:
                await announcer.async_close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.handlers:
            _, pending = await asyncio.wait(set(self.handlers), timeout=self.drain_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.to_thread(db_threads.background.flush)


async def _announce(name: str, host: str, port: int) -> Any:
    """Announce `_wyoming._tcp` over mDNS as Home Assistant discovers it (needs the zeroconf package)."""
    from wyoming.zeroconf import HomeAssistantZeroconf

    announcer = HomeAssistantZeroconf(name=name, port=port, host=None if host in _ANY else host)
    await announcer.register_server()
    return announcer._aiozc  # its AsyncZeroconf: closing it withdraws the announcement
