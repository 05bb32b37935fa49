"""The bounded pool for blocking work (model loading, audio decoding/encoding, inference).

`run(fn, ...)` awaits `fn` on one of `VOICEPROXY_INFERENCE_THREADS` threads, never on the event
loop. Admission control: at most threads + `VOICEPROXY_QUEUE_LIMIT` calls may be running or
waiting; past that, `run` raises ServerBusy (503 with Retry-After) at once instead of queueing
without bound. A slot is held until the function returns in its thread: a cancelled request's
inference keeps its thread busy until it ends, and the count says so honestly.

A response that will call the pool after its first byte (a streamed, spoken reply) takes a
`reservation()` first: one slot, admitted (or refused with 503) before the response begins, that
its later calls use without being refused again, so a stream that starts can finish. Its calls that
overlap each other (sentences synthesised in parallel) are admitted past the limit: the overshoot
is bounded by the number of reservations.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from django.conf import settings

from registry.errors import ServerBusy

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_admitted = 0


def pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=settings.VOICEPROXY_INFERENCE_THREADS, thread_name_prefix="voiceproxy-worker"
            )
        return _pool


def capacity() -> int:
    return settings.VOICEPROXY_INFERENCE_THREADS + settings.VOICEPROXY_QUEUE_LIMIT


def in_flight() -> int:
    return _admitted


class Reservation:
    """One pool slot held for a response's later calls (see the module's docstring)."""

    def __init__(self) -> None:
        self.open = True
        self.idle = True  # no call of ours is using the slot


_reservation: ContextVar[Reservation | None] = ContextVar("voiceproxy_reservation", default=None)


def reservation() -> Reservation:
    """Reserve a slot, or raise ServerBusy. `use()` it where the work runs; `release()` it when the
    response ends."""
    global _admitted
    with _lock:
        if _admitted >= capacity():
            raise _busy()
        _admitted += 1
    return Reservation()


def use(reserved: Reservation) -> None:
    """The pool calls of this context from now on (and of tasks it creates later) use `reserved`."""
    _reservation.set(reserved)


def release(reserved: Reservation) -> None:
    """Give a reservation's slot back (at once, or when its call still running returns)."""
    global _admitted
    with _lock:
        if not reserved.open:
            return
        reserved.open = False
        if reserved.idle:
            _admitted -= 1


def _busy() -> ServerBusy:
    return ServerBusy("The server is at capacity; retry shortly.", retry_after=2)


def _admit() -> Reservation | None:
    """Count a call in; returns the reservation whose slot it took, if it took one."""
    global _admitted
    reserved = _reservation.get()
    with _lock:
        if reserved is not None and reserved.open and reserved.idle:
            reserved.idle = False
            return reserved
        if (reserved is None or not reserved.open) and _admitted >= capacity():
            raise _busy()
        _admitted += 1  # a call of its own, or one beside its reservation's (admitted: it was reserved)
        return None


def _release(reserved: Reservation | None) -> None:
    global _admitted
    with _lock:
        if reserved is not None and reserved.open:
            reserved.idle = True
        else:
            _admitted -= 1


async def run(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking `fn` in the pool; contextvars (the request's audit record) are copied in.

    Raises ServerBusy when the pool and its queue are full.
    """
    slot = _admit()

    def call() -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            _release(slot)

    future = pool().submit(contextvars.copy_context().run, call)
    # A request cancelled while its call still waits in the queue cancels the call too; then
    # `call` never runs, so the slot is given back here.
    future.add_done_callback(lambda f: _release(slot) if f.cancelled() else None)
    return await asyncio.wrap_future(future)


_ITEM, _ERROR, _END = "item", "error", "end"


class PoolStream(AsyncIterator[T]):
    """The items of a blocking iterator, produced in one pool slot and consumed on the event loop.

    Made by `stream()`. `close()` (or leaving an `async for` early and calling it) asks the
    producer to stop before its next item; the slot is released when it has.
    """

    def __init__(self, fn: Callable[..., Iterator[T]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        slot = _admit()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()

        def push(kind: str, value: Any) -> None:
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening any more
                self._stop.set()

        def produce() -> None:
            iterator = None
            try:
                iterator = fn(*args, **kwargs)
                for item in iterator:
                    push(_ITEM, item)
                    if self._stop.is_set():
                        return
            except BaseException as exc:  # noqa: BLE001 - re-raised on the event loop by __anext__
                push(_ERROR, exc)
                return
            finally:
                try:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()  # runs the generator's own cleanup (e.g. leaving model_cache.use) here
                finally:
                    _release(slot)
            push(_END, None)

        self._future = pool().submit(contextvars.copy_context().run, produce)
        self._future.add_done_callback(lambda f: _release(slot) if f.cancelled() else None)

    def __aiter__(self) -> PoolStream[T]:
        return self

    async def __anext__(self) -> T:
        kind, value = await self._queue.get()
        if kind == _END:
            self._queue.put_nowait((_END, None))  # stay exhausted
            raise StopAsyncIteration
        if kind == _ERROR:
            self._queue.put_nowait((_END, None))
            raise value
        return value

    def close(self) -> None:
        self._stop.set()
        self._future.cancel()  # only succeeds while still queued


def stream(fn: Callable[..., Iterator[T]], /, *args: Any, **kwargs: Any) -> PoolStream[T]:
    """Run the blocking iterator `fn(*args, **kwargs)` in the pool, yielding its items asynchronously.

    Raises ServerBusy at once when the pool and its queue are full.
    """
    return PoolStream(fn, args, kwargs)
