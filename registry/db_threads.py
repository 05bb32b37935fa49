"""Two long-lived threads, each with its own database connection, for the ORM work around a request.

Under ASGI, Django runs a request's ORM calls on a thread of that request's own and opens a new
database connection for it (~1 ms on SQLite, more on PostgreSQL), then closes it. The small reads
and writes every /v1/ request needs go to these threads instead, whose connections are kept:

- `reader`: the registry's version check and, when it changed, its reload (registry/snapshot.py);
- `writer`: the audit row and the key's `last_used`, after the response, in the order requests
  ended (one writer, so SQLite never has two of ours waiting on its lock).

A kept connection the database has since dropped (a restart, an idle timeout) fails once: it is
then closed and the call runs once more on a new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class DatabaseThread:
    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self._executor.submit(_with_retry, fn, *args, **kwargs)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` there and wait (from sync code that may block, never the event loop)."""
        return self.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far has run."""
        self._executor.submit(lambda: None).result(timeout=timeout)


def _with_retry(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return fn(*args, **kwargs)
    except (InterfaceError, OperationalError) as exc:
        if connection.connection is None or connection.is_usable():
            raise  # not a lost connection: a real error, for the caller
        logger.warning("database connection lost (%s); reconnecting", exc)
        connection.close()
        return fn(*args, **kwargs)


reader = DatabaseThread("voiceproxy-db-reader")
writer = DatabaseThread("voiceproxy-db-writer")
