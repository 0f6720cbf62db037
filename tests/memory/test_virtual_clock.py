"""The test kit's virtual clock: waiting takes no real time, and time stays in order."""

from __future__ import annotations

import asyncio
import time

import pytest

from amqp_agents import Message, MessagePassingAgent, MessageQueue, MessageType, RequestTimeoutError
from amqp_agents.testing import VirtualClock, running


async def test_an_hour_of_sleeping_takes_no_real_time(virtual_clock: VirtualClock) -> None:
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    before = loop.time()

    await asyncio.gather(asyncio.sleep(3600), asyncio.sleep(60))

    assert loop.time() - before == pytest.approx(3600, abs=0.01)
    assert virtual_clock.elapsed_s >= 3600
    assert time.perf_counter() - started < 0.5


async def test_timeouts_fire_in_virtual_time(virtual_clock: VirtualClock) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(30):
            await asyncio.Event().wait()

    assert 30 <= virtual_clock.elapsed_s < 31


async def test_after_uninstall_time_goes_on_from_where_it_was() -> None:
    loop = asyncio.get_running_loop()
    clock = VirtualClock()
    clock.install(loop)
    await asyncio.sleep(600)
    reached = loop.time()
    clock.uninstall()

    await asyncio.sleep(0.01)  # real time again: a real, short wait

    assert reached <= loop.time() < reached + 5


async def test_a_task_nobody_answers_times_out_virtually(
    memory_queue: MessageQueue, virtual_clock: VirtualClock
) -> None:
    await memory_queue.ensure_inbox("sleeper")  # an inbox, but no agent consuming it
    boss = MessagePassingAgent("boss", memory_queue)

    with pytest.raises(RequestTimeoutError):
        await boss.send_task("sleeper", "wake up", timeout=120)

    assert 120 <= virtual_clock.elapsed_s < 121


async def test_the_probe_hands_over_each_handled_message_in_turn(
    memory_queue: MessageQueue,
) -> None:
    agent = MessagePassingAgent("listener", memory_queue)
    seen: list[object] = []

    async def note(message: Message) -> None:
        seen.append(message.content)

    agent.handlers[MessageType.NOTIFICATION] = note
    async with running(agent) as probe:
        for n in range(3):
            await memory_queue.send(Message(sender="x", recipient="listener", content=n))
        first, second = await probe.next(), await probe.next()
        third = await probe.next()

    assert [h.message.content for h in (first, second, third)] == [0, 1, 2] == seen
