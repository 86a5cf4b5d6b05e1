"""Webhooks first (:mod:`dimmy_webhooks.store.priority`): while webhook inserts queue for the
writer, the worker writes of the same process pass one at a time, in a share of the time;
otherwise at once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest

from dimmy_webhooks.store.priority import IntakeFirst


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queueing(gate: IntakeFirst, inserts: int) -> contextlib.ExitStack:
    """``inserts`` webhook inserts in flight at once, until the stack is closed."""
    stack = contextlib.ExitStack()
    for _ in range(inserts):
        stack.enter_context(gate.inserting())
    return stack


async def test_quiet_intake_lets_every_write_through_at_once() -> None:
    clock = Clock()
    gate = IntakeFirst(busy_in_flight=4, window_seconds=0.1, share=0.1, clock=clock)
    with queueing(gate, 3):  # fewer than 4 waiting at once: not busy
        assert not gate.busy()
        entered = []

        async def write(n: int) -> None:
            async with gate.turn():
                entered.append(n)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(write(n) for n in range(5)))
    assert sorted(entered) == [0, 1, 2, 3, 4]
    assert gate.waited == 0


async def test_a_steady_stream_the_writer_keeps_up_with_is_not_busy() -> None:
    """1,000 webhooks one after the other (each committed before the next): never busy, so a
    steady 100 a second does not slow the worker down however long it lasts."""
    clock = Clock()
    gate = IntakeFirst(busy_in_flight=4, window_seconds=0.1, clock=clock)
    for _ in range(1000):
        with gate.inserting():
            clock.now += 0.003
        clock.now += 0.007
        assert not gate.busy()


async def test_busy_while_inserts_queue_and_a_moment_after() -> None:
    clock = Clock()
    gate = IntakeFirst(busy_in_flight=4, window_seconds=0.1, clock=clock)
    with queueing(gate, 4):
        assert gate.busy()
    clock.now += 0.05
    assert gate.busy()  # the receiver is catching up
    clock.now += 0.06
    assert not gate.busy()


async def test_while_busy_writes_pass_one_at_a_time_in_their_share_of_the_time() -> None:
    """A write that took 20 ms while busy holds the next back 180 ms at a 10 % share."""
    gate = IntakeFirst(busy_in_flight=2, window_seconds=60, share=0.1)
    with queueing(gate, 2):
        pass
    assert gate.busy()
    inside = 0
    most_inside = 0
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def write() -> None:
        nonlocal inside, most_inside
        async with gate.turn():
            starts.append(loop.time())
            inside += 1
            most_inside = max(most_inside, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    await asyncio.gather(*(write() for _ in range(3)))
    assert most_inside == 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= 0.02 + 0.17 for gap in gaps), gaps
    assert gate.waited >= 0.3


async def test_the_pause_after_one_write_is_bounded() -> None:
    """A write that took 5 s (a stalled disk) does not hold the worker back 45 s."""
    clock = Clock()
    gate = IntakeFirst(busy_in_flight=1, window_seconds=1e9, share=0.1, clock=clock)
    with queueing(gate, 1):
        pass
    async with gate.turn():
        clock.now += 5
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with gate.turn():  # the clock stands still: only the bounded real sleep passes
        pass
    assert loop.time() - started < 1.5


def test_the_share_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="share"):
        IntakeFirst(share=0)
    with pytest.raises(ValueError, match="share"):
        IntakeFirst(share=1.5)
