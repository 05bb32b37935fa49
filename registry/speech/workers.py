"""The bounded pool for blocking work (model loading, audio decoding/encoding, inference), scheduled fairly.

`run(fn, ...)` awaits `fn` on one of `VOICEPROXY_INFERENCE_THREADS` threads, never on the event
loop; `stream(fn, ...)` runs a blocking iterator there and yields its items asynchronously.

Scheduling: work is done in small units (a call, or one item of a streamed iterator: a sentence's
audio, a transcript segment), and a free thread takes the waiting unit that ranks first:
1. round-robin between flows (requests): each flow's next unit is placed one round after its last,
   and never before the round being served, so a long reply and a short one take turns, and a new
   request's first unit is placed in the round being served;
2. within a round, a flow's *leading* unit (the first unit of a request, or one marked by
   `leading()`, such as a reply's first sentence) before later units, so a newly arrived request's
   first sound does not wait behind the tail of another's reply (and a flood of new requests cannot
   starve the replies already under way: their units are placed in rounds too);
3. then in arrival order.
A streamed iterator gives its thread back after each item and is queued again for its next one.

Admission control: at most threads + `VOICEPROXY_QUEUE_LIMIT` calls or streams may be admitted (running
or waiting); past that `run` and `stream` raise ServerBusy (503 with Retry-After) at once instead of
queueing without bound. A slot is held until the function returns (or the stream ends) in its
thread: a cancelled request's unit keeps its thread busy until that unit ends, and the count says
so honestly; its later units are dropped.

A response that will call the pool after its first byte (a streamed, spoken reply) takes a
`reservation()` first: one slot, admitted (or refused with 503) before the response begins, that
its later calls use without being refused again, so a stream that starts can finish. Its calls that
overlap each other (sentences synthesised in parallel) are admitted past the limit: the overshoot
is bounded by the number of reservations.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from django.conf import settings

from registry import audit, metrics
from registry.errors import ServerBusy

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
_admitted = 0


# --- admission -----------------------------------------------------------------------------------


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


def held() -> Reservation | None:
    """The open reservation this context's pool calls use, if any (a Realtime session's, a reply's)."""
    reserved = _reservation.get()
    return reserved if reserved is not None and reserved.open else None


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
    record = audit.current()
    metrics.pool_rejected(record.endpoint if record is not None else None)
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


# --- scheduling ----------------------------------------------------------------------------------


class _Flow:
    """A requester's place in the rounds: its units so far and the round of its last one."""

    def __init__(self) -> None:
        self.units = 0
        self.round = -1


class _Unit:
    """One unit of work: `step()` runs it on a worker thread."""

    def step(self) -> None:
        raise NotImplementedError


_leading: ContextVar[bool] = ContextVar("voiceproxy_leading", default=False)


@contextmanager
def leading() -> Iterator[None]:
    """Work submitted inside this block is its flow's leading unit (e.g. a reply's first sentence)."""
    token = _leading.set(True)
    try:
        yield
    finally:
        _leading.reset(token)


class Scheduler:
    """Worker threads taking units from one queue in rank order (see the module's docstring)."""

    def __init__(self, threads: int) -> None:
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int, int, _Unit]] = []  # (round, not leading, arrival, unit)
        self._arrivals = itertools.count()
        self._round = 0  # the round of the unit taken last
        self.running = 0  # units being run now
        self._flows: dict[int, _Flow] = {}  # by id() of the owner, forgotten when the owner is
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"voiceproxy-worker-{i}") for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()
        # As concurrent.futures does: at interpreter exit, before atexit handlers, the threads finish
        # the unit they run (native inference must not outlive the interpreter) and stop.
        threading._register_atexit(self.close)  # type: ignore[attr-defined]

    def submit(self, unit: _Unit, *, owner: object | None, lead: bool = False) -> None:
        with self._cond:
            if owner is None:
                first, place = True, self._round
            else:
                flow = self._flows.get(id(owner))  # a new flow starts at the round being served
                if flow is None:
                    flow = self._flows[id(owner)] = _Flow()
                    weakref.finalize(owner, self._forget, id(owner))
                first = lead or flow.units == 0
                place = max(flow.round + 1, self._round)
                flow.units += 1
                flow.round = place
            heapq.heappush(self._queue, (place, 0 if first else 1, next(self._arrivals), unit))
            metrics.pool_units(waiting=len(self._queue), running=self.running)
            self._cond.notify()

    def _forget(self, key: int) -> None:
        with self._cond:
            self._flows.pop(key, None)

    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return  # what still waits is dropped: nobody is left to read it
                place, _, _, unit = heapq.heappop(self._queue)
                self._round = max(self._round, place)
                self.running += 1
                metrics.pool_units(waiting=len(self._queue), running=self.running)
            try:
                unit.step()
            except BaseException:  # noqa: BLE001 - a unit's own errors go to its caller; this is a bug
                logger.exception("a pool unit failed outside its own error handling")
            finally:
                with self._cond:
                    self.running -= 1
                    metrics.pool_units(waiting=len(self._queue), running=self.running)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)


_scheduler: Scheduler | None = None


def scheduler() -> Scheduler:
    global _scheduler
    with _lock:
        if _scheduler is None:
            _scheduler = Scheduler(settings.VOICEPROXY_INFERENCE_THREADS)
        return _scheduler


def running() -> int:
    """Units being run in the pool right now (engines use fewer threads when they share the CPU)."""
    return _scheduler.running if _scheduler is not None else 0


def is_leading() -> bool:
    """Was this work submitted inside `leading()` (the start of a reply a listener waits for)?"""
    return _leading.get()


def crowded() -> bool:
    """Is other work in the pool beside the caller's (running, or waiting for a thread)?"""
    return _scheduler is not None and (_scheduler.running > 1 or _scheduler.waiting() > 0)


def _owner() -> object | None:
    """The flow work belongs to: the audit record of the request (or Realtime turn) it serves."""
    return audit.current()


class _Call(_Unit):
    def __init__(self, fn: Callable[[], Any], future: Future[Any], context: contextvars.Context) -> None:
        self.fn, self.future, self.context = fn, future, context

    def step(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return  # cancelled while it waited: its slot was given back then
        try:
            result = self.context.run(self.fn)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


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

    future: Future[T] = Future()
    # A request cancelled while its call still waits cancels the call too; then `call` never runs,
    # so the slot is given back here.
    future.add_done_callback(lambda f: _release(slot) if f.cancelled() else None)
    scheduler().submit(_Call(call, future, contextvars.copy_context()), owner=_owner(), lead=_leading.get())
    return await asyncio.wrap_future(future)


_ITEM, _ERROR, _END = "item", "error", "end"


class PoolStream(AsyncIterator[T]):
    """The items of a blocking iterator, produced one unit (item) at a time in the pool and consumed
    on the event loop.

    Made by `stream()`. Its first item is a leading unit when made inside `leading()` (or as its
    request's first work); later items take their turn in the rounds. `close()` (or leaving an
    `async for` early and calling it) stops the iterator before its next item; the slot is released
    when it has.
    """

    def __init__(self, fn: Callable[..., Iterator[T]], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._slot = _admit()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        self._make = lambda: fn(*args, **kwargs)
        self._iterator: Iterator[T] | None = None
        self._context = contextvars.copy_context()
        self._owner = _owner()
        self._step = _StreamStep(self)
        scheduler().submit(self._step, owner=self._owner, lead=_leading.get())

    def _push(self, kind: str, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening any more
            self._stop.set()

    def _advance(self) -> bool:
        """One unit, on a worker thread: the next item. Returns whether there may be more."""
        if self._stop.is_set():
            self._finish(None)
            return False
        try:
            if self._iterator is None:
                self._iterator = self._context.run(self._make)
            item = self._context.run(next, self._iterator)
        except StopIteration:
            self._finish(None)
            return False
        except BaseException as exc:  # noqa: BLE001 - re-raised on the event loop by __anext__
            self._finish(exc)
            return False
        self._push(_ITEM, item)
        return True

    def _finish(self, error: BaseException | None) -> None:
        try:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                self._context.run(close)  # the generator's own cleanup (e.g. leaving model_cache.use)
        except BaseException as exc:  # noqa: BLE001
            error = error or exc
        finally:
            _release(self._slot)
        self._push(_ERROR, error) if error is not None else self._push(_END, None)

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


class _StreamStep(_Unit):
    def __init__(self, stream: PoolStream[Any]) -> None:
        self.stream = stream

    def step(self) -> None:
        if self.stream._advance():
            scheduler().submit(self, owner=self.stream._owner)  # its next item takes its turn


def stream(fn: Callable[..., Iterator[T]], /, *args: Any, **kwargs: Any) -> PoolStream[T]:
    """Run the blocking iterator `fn(*args, **kwargs)` in the pool, yielding its items asynchronously.

    Raises ServerBusy at once when the pool and its queue are full.
    """
    return PoolStream(fn, args, kwargs)
