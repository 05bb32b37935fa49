"""The worker pool's order: a request's first sentence goes before others' later ones; flows take turns.

In process, on a one-thread scheduler (so the order is the pool's choice, not a race between threads),
with the real Piper voice. Order, never time.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from registry import audit
from registry.speech import tts, workers

LONG = " ".join(f"This is sentence number {n} of the first reply." for n in range(1, 7))
SHORT = "A second caller says hello. Then it says goodbye."


@pytest.fixture
def one_thread() -> Iterator[None]:
    previous = workers._scheduler
    workers._scheduler = workers.Scheduler(1)
    try:
        yield
    finally:
        workers._scheduler.close()
        workers._scheduler = previous


async def _words(text: str) -> AsyncIterator[str]:
    for word in text.split(" "):
        yield word + " "


class Order:
    """Who got audio, in the order it arrived."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.sizes: dict[str, list[int]] = {}  # each one's chunks, in bytes
        self.started: dict[str, asyncio.Event] = {}

    def first(self, name: str) -> asyncio.Event:
        return self.started.setdefault(name, asyncio.Event())

    def got(self, name: str, size: int) -> None:
        self.log.append(name)
        self.sizes.setdefault(name, []).append(size)
        self.first(name).set()

    def index(self, name: str, nth: int) -> int:
        """Position in the log of `name`'s `nth` chunk (1-based)."""
        seen = 0
        for i, who in enumerate(self.log):
            seen += who == name
            if seen == nth:
                return i
        raise AssertionError(f"{name} got {seen} chunks, not {nth}: {self.log}")


async def _speak(order: Order, name: str, text: str, *, growing: bool) -> None:
    with audit.scope(method="TEST", endpoint=f"test/schedule/{name}"):
        voicing = await tts.voicing(api_key=None, model=None, voice="alloy")
        if growing:  # a voice chat's reply: sentences as the text arrives, two at once
            chunks = tts.speak_stream(v=voicing, text=_words(text), response_format="pcm", parallelism=2)
        else:  # /v1/audio/speech: the whole text, one stream
            chunks = (await tts.speak(v=voicing, text=text, response_format="pcm")).chunks
        async for chunk in chunks:
            order.got(name, len(chunk))


@pytest.mark.parametrize("growing", [False, True], ids=["speech", "voice-chat"])
def test_a_later_request_s_first_sentence_goes_before_an_earlier_one_s_third(registry, one_thread, growing):
    async def main() -> Order:
        order = Order()
        first = asyncio.create_task(_speak(order, "A", LONG, growing=growing))
        await order.first("A").wait()  # A is being spoken when B arrives
        await _speak(order, "B", SHORT, growing=growing)
        await first
        return order

    order = asyncio.run(main())
    assert order.log.count("A") >= 6 and order.log.count("B") >= 2
    assert order.index("B", 1) < order.index("A", 3), order.log


def test_two_long_replies_take_turns(registry, one_thread):
    async def main() -> Order:
        order = Order()
        first = asyncio.create_task(_speak(order, "A", LONG, growing=False))
        await order.first("A").wait()
        await _speak(order, "B", LONG.replace("first", "second"), growing=False)
        await first
        return order

    order = asyncio.run(main())
    # Round-robin: B neither waits for all of A nor, once started, runs all of its own first.
    assert order.index("B", 2) < order.index("A", 4), order.log
    assert order.index("A", 4) < order.index("B", 6), order.log


def test_the_pool_serves_leading_units_first_then_flows_in_turn(one_thread):
    """The rules themselves, on plain blocking calls: while X's first unit holds the one thread, X
    queues three more, then Y arrives with three."""
    ran: list[str] = []
    release = threading.Event()

    def hold() -> None:
        release.wait(30)
        ran.append("X0")

    async def submit(name: str, calls: list[Callable[[], object]]) -> list[asyncio.Future[object]]:
        with audit.scope(method="TEST", endpoint=f"test/flow/{name}"):
            futures = [asyncio.ensure_future(workers.run(call)) for call in calls]
            await asyncio.sleep(0)  # each call is admitted and queued now, in this scope
        return futures

    async def main() -> None:
        x = await submit("X", [hold, *(functools.partial(ran.append, f"X{i}") for i in (1, 2, 3))])
        y = await submit("Y", [functools.partial(ran.append, f"Y{i}") for i in (0, 1, 2)])
        assert workers.scheduler().waiting() >= 6  # all queued behind X0 (running, or about to)
        release.set()
        await asyncio.gather(*x, *y)

    asyncio.run(main())
    # Y's first unit goes before anyone's later ones; then X and Y take turns.
    assert ran == ["X0", "Y0", "X1", "Y1", "X2", "Y2", "X3"], ran


CUT = "The train leaves the station at nine every morning."


def _pieces(sizes: list[int]) -> list[int]:
    """Chunks of at least 0.1 s of pcm (24 kHz, 16-bit)."""
    return [size for size in sizes if size >= 4_800]


@pytest.mark.parametrize("growing", [False, True], ids=["speech", "voice-chat"])
def test_on_a_busy_pool_a_reply_s_first_phrase_is_spoken_alone_and_the_rest_takes_its_turn(
    registry, one_thread, growing
):
    async def main() -> Order:
        order = Order()
        await _speak(order, "alone", CUT, growing=growing)  # nothing else in the pool
        first = asyncio.create_task(_speak(order, "A", LONG, growing=growing))
        await order.first("A").wait()  # A's reply is being spoken when B arrives
        await _speak(order, "B", CUT, growing=growing)
        await first
        return order

    order = asyncio.run(main())
    # Pieces of speech: the resampler's last few samples come as a chunk of their own.
    alone, crowded = (_pieces(order.sizes[name]) for name in ("alone", "B"))
    assert len(alone) == 1, alone  # a quiet machine speaks the sentence whole
    assert len(crowded) == 2, crowded  # a busy one: "The train leaves the station," then the rest
    assert crowded[0] < 0.75 * alone[0], (crowded, alone)
    assert 0.8 * alone[0] < sum(crowded) < 1.3 * alone[0], (crowded, alone)  # nothing lost or doubled
    # B's first phrase goes before A's later sentences. (The log is the order the listeners got their
    # audio in: B's listener starts reading once its first phrase exists, so that phrase may be logged
    # after A's next sentence.)
    assert order.index("B", 1) < order.index("A", 3), order.log
    if not growing:
        # The rest of B's sentence takes its turn after A's next one, which is always queued by then:
        # a whole text's stream queues its next sentence as it sends one. A growing reply's next
        # sentence waits for its text and a free slot, so it may come after B's rest.
        assert order.index("A", 2) < order.index("B", 2), order.log


def test_the_first_phrase_can_be_turned_off(registry, one_thread, settings):
    settings.VOICEPROXY_LEAD_IN = False

    async def main() -> Order:
        order = Order()
        first = asyncio.create_task(_speak(order, "A", LONG, growing=False))
        await order.first("A").wait()
        await _speak(order, "B", CUT, growing=False)
        await first
        return order

    order = asyncio.run(main())
    assert len(_pieces(order.sizes["B"])) == 1, order.sizes["B"]


def test_a_newcomer_takes_turns_with_a_flow_that_has_run_for_a_while(one_thread):
    """Rounds are counted for the whole pool: X's units so far put it in round 6, and Y, arriving
    then, starts in that round (its first unit first), not in round 0 with six turns to catch up."""
    ran: list[str] = []
    release, holding = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(30)
        ran.append("X-hold")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with audit.scope(method="TEST", endpoint="test/flow/X"):
            x_context = contextvars.copy_context()  # every call below is X's, one flow

        def as_x(call: Callable[[], object]) -> asyncio.Task[object]:
            return loop.create_task(workers.run(call), context=x_context.copy())

        await asyncio.gather(*(as_x(functools.partial(ran.append, f"X-early{i}")) for i in range(6)))
        later = [as_x(call) for call in [hold, *(functools.partial(ran.append, f"X{i}") for i in (1, 2, 3))]]
        await asyncio.to_thread(holding.wait, 30)  # X-hold runs; X1-X3 were queued with it
        with audit.scope(method="TEST", endpoint="test/flow/Y"):
            ys = [asyncio.ensure_future(workers.run(ran.append, f"Y{i}")) for i in range(3)]
            await asyncio.sleep(0)  # each call is admitted and queued now, in this scope
        assert workers.scheduler().waiting() == 6
        release.set()
        await asyncio.gather(*later, *ys)

    asyncio.run(main())
    assert ran[6:] == ["X-hold", "Y0", "X1", "Y1", "X2", "Y2", "X3"], ran
