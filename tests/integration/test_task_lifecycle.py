"""A task's life on a real RabbitMQ: cancellation, A2A states, streamed updates,
resubscribing, typed payloads, and agent cards with discovery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from pydantic import BaseModel

from amqp_agents import (
    AgentCard,
    HandlerError,
    HistoryOffError,
    Message,
    MessagePassingAgent,
    MessageQueue,
    MessageType,
    RemoteError,
    RetryPolicy,
    TaskCancelledError,
    TaskHandle,
    TaskState,
    TaskUpdate,
    cancellation,
    wire,
)
from amqp_agents.cancellation import CancelRecords, publish_cancel
from amqp_agents.senders import connection_user

MakeQueue = Callable[..., Awaitable[MessageQueue]]
FAST_RETRY = RetryPolicy(max_attempts=3, delays_s=(0.05, 0.1))
WAIT_S = 10


class Article(BaseModel):
    """A typed task payload."""

    topic: str
    words: int


Start = Callable[..., Awaitable[MessagePassingAgent]]


@pytest.fixture
async def start_agent(queue: MessageQueue) -> AsyncIterator[Start]:
    """Factory: an agent with handlers set by ``setup``, consuming; stopped at teardown."""
    started: list[MessagePassingAgent] = []

    async def factory(
        agent_id: str,
        setup: Callable[[MessagePassingAgent], None] = lambda _agent: None,
        *,
        on: MessageQueue | None = None,
        **kwargs: Any,
    ) -> MessagePassingAgent:
        kwargs.setdefault("retry", FAST_RETRY)
        agent = MessagePassingAgent(agent_id, on or queue, **kwargs)
        setup(agent)
        await agent.start_consuming()
        started.append(agent)
        return agent

    yield factory
    for agent in started:
        await agent.stop()


async def send(queue: MessageQueue, recipient: str, content: Any = None) -> TaskHandle:
    """Send a TASK from "boss" and return its handle."""
    message = Message(sender="boss", recipient=recipient, type=MessageType.TASK, content=content)
    return await queue.request(message, timeout_s=30)


async def collect(handle: TaskHandle) -> list[TaskUpdate]:
    async with asyncio.timeout(WAIT_S):
        return [update async for update in handle.updates()]


async def reached_the_agents(queue: MessageQueue, handle: TaskHandle) -> None:
    """Wait until the agents on ``queue`` have read the cancel record of ``handle``'s task."""
    async with asyncio.timeout(WAIT_S):
        await CancelRecords.of(queue).received(handle.message_id)


async def retry_queue_exists(amqp_url: str, ns: str, agent_id: str) -> bool:
    """Whether the agent ever retried (its first retry declares the retry queue)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        for delay in FAST_RETRY.distinct_delays():
            for lane in wire.LANES:
                channel = await connection.channel()
                try:
                    await channel.declare_queue(
                        wire.retry_queue_name(ns, agent_id, delay, lane), passive=True
                    )
                    return True
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    pass
        return False
    finally:
        await connection.close()


async def dead_count(amqp_url: str, ns: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        dead = await channel.declare_queue(wire.dead_queue_name(ns), passive=True)
        return dead.declaration_result.message_count or 0
    finally:
        await connection.close()


# -- cancellation -------------------------------------------------------------------------


async def test_a_task_cancelled_while_queued_is_skipped_when_it_arrives(
    start_agent: Start, queue: MessageQueue
) -> None:
    gate = asyncio.Event()
    handled: list[Any] = []

    def setup(agent: MessagePassingAgent) -> None:
        @agent.on(MessageType.TASK)
        async def work(message: Message) -> Any:
            handled.append(message.content)
            if message.content == "first":
                await gate.wait()
            return message.content

    await start_agent("worker", setup, concurrency=1)
    first = await send(queue, "worker", "first")
    queued = await send(queue, "worker", "queued")
    assert await queued.cancel() is True
    with pytest.raises(TaskCancelledError):
        await queued.result()
    assert await queued.state() is TaskState.CANCELED
    await reached_the_agents(queue, queued)
    gate.set()
    assert await first.result() == "first"
    # One consumer, one at a time, in order: once "after" is done, "queued" has arrived.
    assert await (await send(queue, "worker", "after")).result() == "after"
    assert handled == ["first", "after"]


async def test_a_running_handler_is_cancelled_and_nothing_is_retried(
    start_agent: Start, queue: MessageQueue, amqp_url: str, namespace: str
) -> None:
    started, saw_cancel = asyncio.Event(), asyncio.Event()
    calls = 0

    def setup(agent: MessagePassingAgent) -> None:
        @agent.on(MessageType.TASK)
        async def work(message: Message) -> Any:
            nonlocal calls
            if message.content != "long":
                return message.content
            calls += 1
            started.set()
            try:
                await asyncio.Event().wait()  # an LLM call that would take minutes
            except asyncio.CancelledError:
                saw_cancel.set()
                raise

    await start_agent("worker", setup)
    handle = await send(queue, "worker", "long")
    async with asyncio.timeout(WAIT_S):
        await started.wait()
    assert await handle.cancel() is True
    with pytest.raises(TaskCancelledError):
        await handle.result()
    async with asyncio.timeout(WAIT_S):
        await saw_cancel.wait()
    # The agent survives and serves the next task.
    assert await (await send(queue, "worker", "next")).result() == "next"
    assert calls == 1
    assert not await retry_queue_exists(amqp_url, namespace, "worker")
    assert await dead_count(amqp_url, namespace) == 0


async def test_cancelling_a_finished_task_is_a_no_op_that_says_so(
    start_agent: Start, queue: MessageQueue, caplog: pytest.LogCaptureFixture
) -> None:
    def setup(agent: MessagePassingAgent) -> None:
        agent.on(MessageType.TASK)(lambda message: asyncio.sleep(0, "done"))

    await start_agent("worker", setup)
    handle = await send(queue, "worker")
    assert await handle.result() == "done"
    caplog.set_level("INFO", logger="amqp_agents.rpc")
    assert await handle.cancel() is False
    assert "already completed: nothing to cancel" in caplog.text
    assert await handle.state() is TaskState.COMPLETED
    assert await handle.result() == "done"


async def test_a_cancel_outlives_an_agent_restart(
    start_agent: Start, queue: MessageQueue, make_queue: MakeQueue
) -> None:
    handled: list[Any] = []

    def setup(agent: MessagePassingAgent) -> None:
        @agent.on(MessageType.TASK)
        async def work(message: Message) -> Any:
            handled.append(message.content)
            return message.content

    first = await start_agent("worker", setup)
    await first.stop()  # the agent is down: its tasks wait in the inbox
    doomed = await send(queue, "worker", "doomed")
    assert await doomed.cancel() is True
    # A new process: nothing of the first agent's memory, only what the broker kept.
    await start_agent("worker", setup, on=await make_queue())
    assert await (await send(queue, "worker", "kept")).result() == "kept"
    assert handled == ["kept"]


async def test_a_restart_replays_only_the_cancels_that_may_still_matter(
    start_agent: Start,
    queue: MessageQueue,
    make_queue: MakeQueue,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handled: list[Any] = []

    def setup(agent: MessagePassingAgent) -> None:
        @agent.on(MessageType.TASK)
        async def work(message: Message) -> Any:
            handled.append(message.content)
            return message.content

    far = datetime.now(UTC) + timedelta(hours=1)
    for n in range(5):  # cancels of tasks sent before the bound: a restart skips them
        await publish_cancel(
            queue.publisher, f"old-{n}", sender="boss", recipient="worker", deadline=far
        )
    # A stream offset by timestamp has whole seconds: let the clock pass to a later
    # second than the old records' (time passing, not a synchronisation).
    bound = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()) + 2, UTC)
    await asyncio.sleep((bound - datetime.now(UTC)).total_seconds())
    first = await start_agent("worker", setup)
    await first.stop()
    doomed = await send(queue, "worker", "doomed")
    assert await doomed.cancel() is True
    monkeypatch.setattr(cancellation, "replay_start", lambda now=None: bound)
    restarted = await make_queue()
    await start_agent("worker", setup, on=restarted)
    assert await (await send(queue, "worker", "kept")).result() == "kept"
    assert handled == ["kept"]  # the cancel made before the restart still applies
    assert CancelRecords.of(restarted).entries_read == 1  # not the 5 older records


async def test_a_task_sent_longer_ago_than_the_longest_deadline_is_expired(
    start_agent: Start, queue: MessageQueue, raw_channel: aio_pika.abc.AbstractChannel
) -> None:
    handled: list[Any] = []

    def setup(agent: MessagePassingAgent) -> None:
        @agent.on(MessageType.TASK)
        async def work(message: Message) -> Any:
            handled.append(message.content)
            young_handled.set()

    young_handled = asyncio.Event()
    await queue.ensure_inbox("worker")
    now = datetime.now(UTC)
    held = timedelta(seconds=wire.MAX_TASK_DEADLINE_S)
    for content, age in [("too old", held + timedelta(minutes=1)), ("young", timedelta(0))]:
        # The requester's deadline is ahead for both: only the timestamp differs.
        message = Message(
            sender="boss",
            recipient="worker",
            type=MessageType.TASK,
            content=content,
            timestamp=now - age,
        )
        await queue.send(message, deadline=now + timedelta(hours=1))
    dead = await raw_channel.declare_queue(wire.dead_queue_name(queue.namespace), passive=True)
    await start_agent("worker", setup)
    async with asyncio.timeout(WAIT_S):
        async with dead.iterator() as letters:
            async for letter in letters:
                await letter.ack()
                break
    assert json.loads(letter.body) == "too old"
    assert letter.headers[wire.H_DEAD_REASON] == "expired"
    async with asyncio.timeout(WAIT_S):
        await young_handled.wait()
    assert handled == ["young"]


# -- states and updates -------------------------------------------------------------------


async def _gated_work(message: Message, agent: MessagePassingAgent, gate: asyncio.Event) -> Any:
    await agent.send_status("thinking")
    await gate.wait()
    if message.content == "fail":
        raise HandlerError("no good")
    return "ok"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("succeed", [TaskState.SUBMITTED, TaskState.WORKING, TaskState.COMPLETED]),
        ("fail", [TaskState.SUBMITTED, TaskState.WORKING, TaskState.FAILED]),
        ("cancel", [TaskState.SUBMITTED, TaskState.WORKING, TaskState.CANCELED]),
        ({"topic": "x"}, [TaskState.SUBMITTED, TaskState.REJECTED]),
    ],
    ids=["succeeds", "fails", "cancelled", "bad-payload"],
)
async def test_the_state_sequence_of_a_task(
    start_agent: Start,
    queue: MessageQueue,
    amqp_url: str,
    namespace: str,
    content: Any,
    expected: list[TaskState],
) -> None:
    gate = asyncio.Event()
    typed_calls: list[Article] = []

    def setup(agent: MessagePassingAgent) -> None:
        agent.on(MessageType.TASK)(lambda message: _gated_work(message, agent, gate))

        @agent.on(MessageType.REQUEST)
        async def typed(article: Article) -> Any:  # annotated: validated
            typed_calls.append(article)
            return article.words

    await start_agent("worker", setup)
    if isinstance(content, dict):
        message = Message(sender="boss", recipient="worker", type=MessageType.REQUEST)
        message.content = content
        handle = await queue.request(message, timeout_s=30)
    else:
        handle = await send(queue, "worker", content)
    states = [await handle.state()]
    async with asyncio.timeout(WAIT_S):
        async for update in handle.updates():
            if update.state is not states[-1]:
                states.append(update.state)
            if update.state is TaskState.WORKING:
                if content == "cancel":
                    await handle.cancel()
                gate.set()
    assert states == expected
    assert await handle.state() is expected[-1]
    if content == "fail":
        with pytest.raises(RemoteError, match="no good"):
            await handle.result()
    if isinstance(content, dict):
        with pytest.raises(RemoteError, match="field 'words'") as refused:
            await handle.result()
        assert refused.value.error_type == "PayloadError"
        assert typed_calls == []
        assert not await retry_queue_exists(amqp_url, namespace, "worker")
        assert await dead_count(amqp_url, namespace) == 0


async def test_updates_yield_a_hundred_chunks_in_order_before_the_result(
    start_agent: Start, queue: MessageQueue
) -> None:
    def setup(agent: MessagePassingAgent) -> None:
        @agent.on(MessageType.TASK)
        async def write(message: Message) -> Any:
            for n in range(100):
                await agent.send_chunk(f"chunk {n}")
            return "the article"

    await start_agent("writer", setup)
    handle = await send(queue, "writer")
    updates = await collect(handle)
    assert [u.content for u in updates[:-1]] == [f"chunk {n}" for n in range(100)]
    assert [u.chunk for u in updates[:-1]] == list(range(100))
    assert updates[-1].final and updates[-1].state is TaskState.COMPLETED
    assert updates[-1].content == "the article"
    assert await handle.result() == "the article"


async def test_a_requester_resubscribes_after_its_connection_was_cut(
    start_agent: Start, make_queue: MakeQueue
) -> None:
    gate = asyncio.Event()

    def setup(agent: MessagePassingAgent) -> None:
        @agent.on(MessageType.TASK)
        async def write(message: Message) -> Any:
            for n in range(100):
                if n == 50:
                    await gate.wait()
                await agent.send_chunk(n)
            return "done"

    await start_agent("writer", setup)
    requester = await make_queue()
    handle = await send(requester, "writer")
    seen: list[int] = []
    async with asyncio.timeout(WAIT_S):
        async for update in handle.updates():
            seen.append(update.content)
            if len(seen) == 50:
                break
    await requester.close()  # its reply queue dies with it; the agent goes on
    gate.set()
    again = await (await make_queue()).resubscribe(handle.message)
    updates = await collect(again)
    assert [u.content for u in updates[:-1]] == list(range(100))
    assert await again.result() == "done"
    assert await again.state() is TaskState.COMPLETED


# -- cards and discovery ------------------------------------------------------------------


async def test_discovery_lists_agents_with_their_schemas_and_drops_one_that_stops(
    start_agent: Start, queue: MessageQueue
) -> None:
    async def write(article: Article) -> str:
        return article.topic

    agents = []
    for agent_id in ("researcher", "writer", "editor"):

        def setup(agent: MessagePassingAgent) -> None:
            agent.on(MessageType.TASK, model=Article)(write)

        a2a = {"name": agent_id, "capabilities": {"streaming": True}}
        card = AgentCard(description=f"the {agent_id}", version="1.2", a2a=a2a)
        agents.append(await start_agent(agent_id, setup, card=card))
    found = await queue.discover()
    assert [info.card.id for info in found] == ["editor", "researcher", "writer"]
    for info in found:
        assert info.live
        assert info.card.description == f"the {info.card.id}"
        assert info.card.version == "1.2"
        assert info.card.a2a == {"name": info.card.id, "capabilities": {"streaming": True}}
        skills = {skill.message_type: skill.input_schema for skill in info.card.skills}
        assert skills["task"] == Article.model_json_schema()
        assert skills["request"] is None  # the untyped default handler
    await agents[1].stop()
    assert [info.card.id for info in await queue.discover()] == ["editor", "researcher"]
    gone = {info.card.id: info for info in await queue.discover(include_gone=True)}
    assert gone["writer"].card.state == "gone" and not gone["writer"].live


async def test_a_cancel_record_for_another_agent_is_ignored(
    start_agent: Start, queue: MessageQueue
) -> None:
    gate = asyncio.Event()
    handled: list[Any] = []

    def setup(agent: MessagePassingAgent) -> None:
        @agent.on(MessageType.TASK)
        async def work(message: Message) -> Any:
            handled.append(message.content)
            if message.content == "first":
                await gate.wait()
            return message.content

    await start_agent("worker", setup, concurrency=1)
    first = await send(queue, "worker", "first")
    queued = await send(queue, "worker", "queued")
    assert queued.deadline is not None
    await publish_cancel(
        queue.publisher,
        queued.message_id,
        sender="boss",
        recipient="other",
        deadline=queued.deadline,
    )
    await reached_the_agents(queue, queued)
    gate.set()
    assert await first.result() == "first"
    assert await queued.result() == "queued"
    assert handled == ["first", "queued"]


async def test_a_foreign_client_cancels_and_reads_cards_as_the_wire_doc_says(
    start_agent: Start,
    queue: MessageQueue,
    raw_channel: aio_pika.abc.AbstractChannel,
    namespace: str,
    amqp_url: str,
) -> None:
    gate = asyncio.Event()

    def setup(agent: MessagePassingAgent) -> None:
        @agent.on(MessageType.TASK, model=Article)
        async def work(article: Article) -> Any:
            await gate.wait()
            return article.words

    await start_agent("worker", setup, concurrency=1, card=AgentCard(description="counts"))
    first = await send(queue, "worker", {"topic": "a", "words": 1})
    queued = await send(queue, "worker", {"topic": "b", "words": 2})
    deadline = queued.deadline
    assert deadline is not None
    # docs/wire-format.md, "Cancelling a task": plain AMQP, no amqp_agents.
    cancels = await raw_channel.get_exchange(wire.cancel_exchange_name(namespace), ensure=False)
    await cancels.publish(
        aio_pika.Message(
            json.dumps({"cancel": queued.message_id}).encode(),
            content_type="application/json",
            correlation_id=queued.message_id,
            user_id=connection_user(amqp_url),
            headers={
                "x-deadline-us": wire.to_us(deadline),
                "x-sender": "boss",
                "x-recipient": "worker",
            },
        ),
        routing_key="",
    )
    await reached_the_agents(queue, queued)
    gate.set()
    assert await first.result() == 1
    with pytest.raises(TaskCancelledError, match="before it started"):
        await queued.result()
    # "Agent cards": the stream, read from its first entry.
    await raw_channel.set_qos(prefetch_count=10)
    stream = await raw_channel.get_queue(wire.card_stream_name(namespace), ensure=False)
    async with (
        asyncio.timeout(WAIT_S),
        stream.iterator(arguments={"x-stream-offset": "first"}) as entries,
    ):
        async for entry in entries:
            await entry.ack()
            card = json.loads(entry.body)
            break
    assert (card["id"], card["description"], card["state"]) == ("worker", "counts", "up")
    assert card["skills"][0] == {
        "message_type": "task",
        "input_schema": Article.model_json_schema(),
    }


async def test_a_handler_names_the_input_required_state(
    start_agent: Start, queue: MessageQueue
) -> None:
    def setup(agent: MessagePassingAgent) -> None:
        @agent.on(MessageType.TASK)
        async def ask(message: Message) -> Any:
            await agent.send_status("which year?", state=TaskState.INPUT_REQUIRED)
            return "asked"

    await start_agent("worker", setup)
    updates = await collect(await send(queue, "worker"))
    assert [(u.state, u.content) for u in updates] == [
        (TaskState.INPUT_REQUIRED, "which year?"),
        (TaskState.COMPLETED, "asked"),
    ]


async def test_with_history_off_cancel_and_discovery_work_and_resubscribe_says_why_not(
    make_queue: MakeQueue,
) -> None:
    queue = await make_queue(history="off")
    gate = asyncio.Event()
    agent = MessagePassingAgent("worker", queue, card=AgentCard(description="no history"))

    @agent.on(MessageType.TASK)
    async def work(message: Message) -> Any:
        await gate.wait()

    await agent.start_consuming()
    try:
        handle = await send(queue, "worker")
        assert [info.card.description for info in await queue.discover()] == ["no history"]
        with pytest.raises(HistoryOffError, match="is off"):
            await queue.resubscribe(handle.message)
        assert await handle.cancel() is True
        with pytest.raises(TaskCancelledError):
            await handle.result()
    finally:
        gate.set()
        await agent.stop()
