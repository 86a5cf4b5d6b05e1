"""Webhooks first (:mod:`dimmy_webhooks.store.priority`): while webhooks arrive quickly, the
worker writes of the same process pass one at a time, in a share of the time; otherwise at once."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from dimmy_webhooks.store.priority import IntakeFirst


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_quiet_intake_lets_every_write_through_at_once() -> None:
    clock = Clock()
    gate = IntakeFirst(busy_inserts=8, window_seconds=0.1, share=0.1, clock=clock)
    for _ in range(7):  # fewer than 8 inserts in the window: not busy
        gate.note_insert()
    assert not gate.busy()
    entered = []

    async def write(n: int) -> None:
        async with gate.turn():
            entered.append(n)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(write(n) for n in range(5)))
    assert sorted(entered) == [0, 1, 2, 3, 4]
    assert gate.waited == 0


async def test_a_slow_trickle_of_webhooks_is_not_busy() -> None:
    clock = Clock()
    gate = IntakeFirst(busy_inserts=8, window_seconds=0.1, clock=clock)
    for _ in range(50):  # 20 a second
        gate.note_insert()
        clock.now += 0.05
    assert not gate.busy()


async def test_while_busy_writes_pass_one_at_a_time_in_their_share_of_the_time() -> None:
    """A write that took 20 ms while busy holds the next back 180 ms at a 10 % share."""
    gate = IntakeFirst(busy_inserts=2, window_seconds=60, share=0.1)
    gate.note_insert()
    gate.note_insert()
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
    gate = IntakeFirst(busy_inserts=1, window_seconds=1e9, share=0.1, clock=clock)
    gate.note_insert()
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
