"""Two long-lived threads, each with its own database connection, for the ORM work around a request.

Under ASGI, Django runs a request's ORM calls on a thread of that request's own and opens a new
database connection for it (~1 ms on SQLite, more on PostgreSQL), then closes it. The small reads
and writes every /v1/ request needs go to these threads instead, whose connections are kept:

- `foreground`: what a request waits for: the registry's version check and, when it changed, its
  reload (registry/snapshot.py), an unseen key, a spoken reply's row. Calls give up after
  `FOREGROUND_TIMEOUT_S` with a 503, so a database that hangs fails requests instead of stalling them.
- `background`: what a request leaves behind, after its response: the audit row, the key's
  `last_used`, purges. One thread, so rows land in the order requests ended and SQLite never has two
  of ours waiting on its lock; a failure is logged, never raised to anyone.

A kept connection the database has since dropped (a restart, an idle timeout) fails once: it is then
closed, and the call runs once more on a new connection when it is safe to repeat (`retry=True`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, connection

from registry.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

FOREGROUND_TIMEOUT_S = 10.0
BACKLOG_WARNING = 1000  # queued background jobs: past this many the database is not keeping up


class DatabaseThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._queued = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, retry: bool = True, **kwargs: Any) -> Future[T]:
        with self._lock:
            self._queued += 1
            queued = self._queued
        if queued % BACKLOG_WARNING == 0:
            logger.warning("%s: %d database jobs queued; the database is not keeping up", self.name, queued)
        future = self._executor.submit(_run, fn, args, kwargs, retry)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[Any]) -> None:
        with self._lock:
            self._queued -= 1

    def call(self, fn: Callable[..., T], /, *args: Any, retry: bool = True, **kwargs: Any) -> T:
        """Run `fn` there and wait, from sync code that may block (never the event loop).

        Raises ServerBusy (503) when the database has not answered in FOREGROUND_TIMEOUT_S.
        """
        try:
            return self.submit(fn, *args, retry=retry, **kwargs).result(timeout=FOREGROUND_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise _unavailable() from None

    async def run(self, fn: Callable[..., T], /, *args: Any, retry: bool = True, **kwargs: Any) -> T:
        """`call` for async code."""
        future = asyncio.wrap_future(self.submit(fn, *args, retry=retry, **kwargs))
        try:
            return await asyncio.wait_for(future, FOREGROUND_TIMEOUT_S)
        except TimeoutError:
            raise _unavailable() from None

    def later(self, fn: Callable[..., object], /, *args: Any, what: str, **kwargs: Any) -> Future[Any]:
        """Run `fn` there when its turn comes; a failure is logged as failing to `what`."""
        future = self.submit(fn, *args, **kwargs)
        future.add_done_callback(lambda done: _report(done, what))
        return future

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far has run."""
        self._executor.submit(lambda: None).result(timeout=timeout)

    def close_connection(self, timeout: float = 10.0) -> None:
        """Run what is queued, then close this thread's connection (the next job opens a new one)."""
        # `connection` is per thread: looked up there, not here.
        self._executor.submit(lambda: connection.close()).result(timeout=timeout)


def _unavailable() -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"The database did not answer within {FOREGROUND_TIMEOUT_S:g} s; retry shortly.", retry_after=5
    )


def _run(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], retry: bool) -> T:
    try:
        return fn(*args, **kwargs)
    except (InterfaceError, OperationalError) as exc:
        if connection.connection is None or connection.is_usable():
            raise  # not a lost connection: a real error, for the caller
        logger.warning("database connection lost (%s); reconnecting", exc)
        connection.close()
        if not retry:
            raise
        return fn(*args, **kwargs)


def _report(done: Future[Any], what: str) -> None:
    exc = done.exception()
    if exc is not None:
        logger.error("could not %s", what, exc_info=exc)


foreground = DatabaseThread("voiceproxy-db-foreground")
background = DatabaseThread("voiceproxy-db-background")


def close_connections() -> None:
    """Write what is queued and close both kept connections: before a database is dropped or the
    process ends (a kept PostgreSQL session would block `DROP DATABASE`)."""
    for thread in (background, foreground):
        thread.close_connection()
