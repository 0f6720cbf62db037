"""``amqp-agents cancel`` and ``amqp-agents agents`` as subprocesses on the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import pytest

from amqp_agents import (
    AgentCard,
    Message,
    MessagePassingAgent,
    MessageQueue,
    MessageType,
    TaskCancelledError,
    TaskHandle,
    wire,
)

from .conftest import Run

WAIT_S = 10
Start = Callable[..., Awaitable[MessagePassingAgent]]


@pytest.fixture
async def start_agent(queue: MessageQueue) -> AsyncIterator[Start]:
    started: list[MessagePassingAgent] = []

    async def factory(agent_id: str, handler: Any, **kwargs: Any) -> MessagePassingAgent:
        agent = MessagePassingAgent(agent_id, queue, **kwargs)
        agent.on(MessageType.TASK)(handler)
        await agent.start_consuming()
        started.append(agent)
        return agent

    yield factory
    for agent in started:
        await agent.stop()


async def send(queue: MessageQueue, recipient: str, content: Any = None) -> TaskHandle:
    message = Message(sender="boss", recipient=recipient, type=MessageType.TASK, content=content)
    return await queue.request(message, timeout_s=30)


async def test_cli_cancel_of_a_queued_task_ends_the_requesters_wait(
    start_agent: Start, queue: MessageQueue, run_cli: Run
) -> None:
    handled: list[Any] = []

    async def work(message: Message) -> Any:
        handled.append(message.content)
        return message.content

    await queue.ensure_inbox("worker")  # the agent is not running yet
    handle = await send(queue, "worker", "doomed")
    status, output = await run_cli("cancel", handle.message_id)
    assert status == 0, output
    assert f"task {handle.message_id} to worker cancelled" in output
    await start_agent("worker", work)
    with pytest.raises(TaskCancelledError, match="before it started"):
        await handle.result()
    assert handled == []


async def test_cli_cancel_of_a_running_task_cancels_its_handler(
    start_agent: Start, queue: MessageQueue, run_cli: Run
) -> None:
    started, saw_cancel = asyncio.Event(), asyncio.Event()

    async def work(message: Message) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    await start_agent("worker", work)
    handle = await send(queue, "worker")
    async with asyncio.timeout(WAIT_S):
        await started.wait()
    status, output = await run_cli("cancel", handle.message_id)
    assert status == 0, output
    with pytest.raises(TaskCancelledError, match="while it ran"):
        await handle.result()
    assert saw_cancel.is_set()


async def test_cli_cancel_of_a_finished_task_says_so(
    start_agent: Start, queue: MessageQueue, run_cli: Run
) -> None:
    async def work(message: Message) -> Any:
        return "done"

    await start_agent("worker", work)
    handle = await send(queue, "worker")
    assert await handle.result() == "done"
    status, output = await run_cli("cancel", handle.message_id)
    assert (status, output.strip()) == (
        0,
        f"task {handle.message_id} already completed: nothing to cancel",
    )


@pytest.mark.parametrize("to", [["--to", "worker"], []], ids=["to-worker", "to-any"])
async def test_cli_cancel_with_history_off_publishes_without_the_lookup(
    make_queue: Callable[..., Awaitable[MessageQueue]], run_cli: Run, to: list[str]
) -> None:
    queue = await make_queue(history="off")
    handled: list[Any] = []
    agent = MessagePassingAgent("worker", queue)

    @agent.on(MessageType.TASK)
    async def work(message: Message) -> Any:
        handled.append(message.content)
        return message.content

    await queue.ensure_inbox("worker")  # the agent is not running yet
    handle = await send(queue, "worker", "doomed")
    status, output = await run_cli("cancel", "--history", "off", *to, handle.message_id)
    assert status == 0, output
    assert f"cancel record for task {handle.message_id} published" in output
    assert "history is off, so whether the task exists or already completed is unknown" in output
    await agent.start_consuming()
    try:
        with pytest.raises(TaskCancelledError, match="before it started"):
            async with asyncio.timeout(WAIT_S):
                await handle.result()
        assert await (await send(queue, "worker", "kept")).result() == "kept"
        assert handled == ["kept"]
        # A finished task: the same record, the same honest answer; nothing changes.
        status, output = await run_cli("cancel", "--history", "off", handle.message_id)
        assert (status, "is unknown" in output) == (0, True), output
    finally:
        await agent.stop()


async def test_cli_cancel_of_an_unknown_task_is_one_line(queue: MessageQueue, run_cli: Run) -> None:
    status, output = await run_cli("cancel", "no-such-task")
    assert status == 1
    assert output.strip().count("\n") == 0
    assert "'no-such-task' is not in the retained history" in output


async def test_cli_agents_lists_cards_and_who_runs(
    start_agent: Start, queue: MessageQueue, run_cli: Run
) -> None:
    async def work(message: Message) -> Any:
        return None

    await start_agent("writer", work, card=AgentCard(description="writes articles", version="2"))
    stopped = await start_agent("critic", work, card=AgentCard(description="finds faults"))
    await stopped.stop()
    status, output = await run_cli("agents")
    assert status == 0, output
    lines = output.strip().splitlines()
    assert lines[0].split()[:4] == ["agent", "state", "version", "skills"]
    assert lines[1].split()[:3] == ["writer", "running", "2"]
    assert lines[1].endswith("writes articles")
    assert len(lines) == 2
    status, output = await run_cli("agents", "--all")
    assert [line.split()[:2] for line in output.strip().splitlines()[1:]] == [
        ["critic", "gone"],
        ["writer", "running"],
    ]


async def test_cli_agents_of_a_missing_namespace_is_one_line_and_creates_nothing(
    run_cli: Run, raw_channel: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    missing = f"{namespace}-missing"
    status, output = await run_cli("agents", "--namespace", missing)
    assert status == 1
    assert output.strip().count("\n") == 0
    assert "does not exist" in output
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await raw_channel.declare_exchange(wire.card_exchange_name(missing), passive=True)
