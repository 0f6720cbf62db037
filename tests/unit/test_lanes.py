"""PrioritySlots: of the deliveries an agent holds, the most urgent starts first."""

from __future__ import annotations

import asyncio

import pytest

from amqp_agents.lanes import PrioritySlots


async def test_a_free_slot_goes_to_the_most_urgent_waiter_then_the_earliest() -> None:
    slots = PrioritySlots(1)
    started: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, priority: int) -> None:
        async with slots.hold(priority):
            started.append(name)
            if name == "first":
                await release.wait()

    first = asyncio.create_task(hold("first", 1))
    await asyncio.sleep(0)  # it holds the only slot
    waiters = [
        asyncio.create_task(hold(name, priority))
        for name, priority in [("low", 1), ("normal-a", 2), ("urgent", 4), ("normal-b", 2)]
    ]
    for _ in range(3):
        await asyncio.sleep(0)
    assert slots.waiting == 4
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *waiters), 5)
    assert started == ["first", "urgent", "normal-a", "normal-b", "low"]


async def test_at_most_size_hold_a_slot_at_once() -> None:
    slots = PrioritySlots(3)
    holding = 0
    most = 0

    async def work(priority: int) -> None:
        nonlocal holding, most
        async with slots.hold(priority):
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(0)
            holding -= 1

    await asyncio.wait_for(asyncio.gather(*(work(p % 4 + 1) for p in range(20))), 5)
    assert most == 3


async def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    slots = PrioritySlots(1)
    release = asyncio.Event()
    started: list[str] = []

    async def hold(name: str, priority: int) -> None:
        async with slots.hold(priority):
            started.append(name)
            if name == "first":
                await release.wait()

    first = asyncio.create_task(hold("first", 1))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(hold("cancelled", 4))
    later = asyncio.create_task(hold("later", 1))
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await asyncio.wait_for(asyncio.gather(first, later), 5)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert started == ["first", "later"]


def test_a_slot_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PrioritySlots(0)
