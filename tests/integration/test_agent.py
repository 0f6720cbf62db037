"""MessagePassingAgent on a real RabbitMQ: request/response, failures, retries, stop."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest

from amqp_agents import (
    HandlerError,
    Message,
    MessagePassingAgent,
    MessagePriority,
    MessageQueue,
    MessageType,
    RemoteError,
    RequestTimeoutError,
    RetryPolicy,
    TaskHandle,
    UnknownRecipientError,
    wire,
)
from amqp_agents.senders import connection_user

MakeQueue = Callable[..., Awaitable[MessageQueue]]
FAST_RETRY = RetryPolicy(max_attempts=3, delays_s=(0.05, 0.1))


class EchoAgent(MessagePassingAgent):
    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        return {"task": task, "context": context}


@pytest.fixture
async def start_agent(queue: MessageQueue) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory: build an agent, start consuming; every agent is stopped at teardown."""
    started: list[MessagePassingAgent] = []

    async def factory(
        agent_id: str, cls: type[MessagePassingAgent] = EchoAgent, **kwargs: Any
    ) -> Any:
        kwargs.setdefault("retry", FAST_RETRY)
        agent = cls(agent_id, queue, **kwargs)
        await agent.start_consuming()
        started.append(agent)
        return agent

    yield factory
    for agent in started:
        await agent.stop()


async def dead_letters(raw_channel: aio_pika.abc.AbstractChannel, ns: str, n: int) -> list[Any]:
    """Consume ``n`` messages from ``{ns}.dead`` (bounded by a timeout), acking them."""
    dead = await raw_channel.get_queue(wire.dead_queue_name(ns))
    got: list[Any] = []
    async with asyncio.timeout(10), dead.iterator() as it:
        async for incoming in it:
            await incoming.ack()
            got.append(incoming)
            if len(got) == n:
                break
    return got


async def test_send_task_returns_the_result(start_agent: Any, queue: MessageQueue) -> None:
    await start_agent("worker")
    boss = MessagePassingAgent("boss", queue)
    result = await boss.send_task("worker", "add", {"a": 1}, timeout=10)
    assert result == {"task": "add", "context": {"a": 1}}


async def test_hundred_concurrent_requests_each_get_their_own_result(
    start_agent: Any, queue: MessageQueue
) -> None:
    await start_agent("worker", concurrency=16)
    boss = MessagePassingAgent("boss", queue)
    results = await asyncio.gather(
        *(boss.send_task("worker", f"job-{i}", {"i": i}, timeout=30) for i in range(100))
    )
    assert [r["context"]["i"] for r in results] == list(range(100))
    assert [r["task"] for r in results] == [f"job-{i}" for i in range(100)]


async def test_timeout_raises_promptly(queue: MessageQueue) -> None:
    await queue.ensure_inbox("sleeper")  # exists, but nobody consumes it
    boss = MessagePassingAgent("boss", queue)
    with pytest.raises(RequestTimeoutError) as info:
        # Only the request's own timeout can end this wait (nobody answers); the outer
        # bound turns a hang into a failure (a plain TimeoutError is not the one expected).
        async with asyncio.timeout(10):
            await boss.send_task("sleeper", "never done", timeout=0.5)
    assert isinstance(info.value, TimeoutError)


async def test_expired_task_is_dead_lettered_not_run(
    start_agent: Any, queue: MessageQueue, raw_channel: Any, namespace: str
) -> None:
    ran: list[str] = []

    class Recorder(MessagePassingAgent):
        async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
            ran.append(task)
            return "done"

    await queue.ensure_inbox("late")
    boss = MessagePassingAgent("boss", queue)
    with pytest.raises(RequestTimeoutError):
        await boss.send_task("late", "too late", timeout=0.2)
    await start_agent("late", Recorder)
    # The broker expires it at the head of the inbox (x-death) or the agent sees its
    # deadline header: either way it lands in the dead letters, never in the handler.
    [corpse] = await dead_letters(raw_channel, namespace, 1)
    assert json.loads(corpse.body)["description"] == "too late"
    reason = corpse.headers.get(wire.H_DEAD_REASON) or corpse.headers["x-death"][0]["reason"]
    assert str(reason) == "expired"
    assert ran == []


async def test_remote_error_raises_well_before_timeout(
    start_agent: Any, queue: MessageQueue
) -> None:
    attempts: list[str] = []

    class Broken(MessagePassingAgent):
        async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
            attempts.append(task)
            raise ValueError(f"cannot do {task}")

    policy = RetryPolicy()  # the default policy
    await start_agent("broken", Broken, retry=policy)
    boss = MessagePassingAgent("boss", queue)
    with pytest.raises(RemoteError) as info:
        # The request's timeout is an hour away: only the error reply can end the wait
        # before the outer bound (a TimeoutError there is not the RemoteError expected).
        async with asyncio.timeout(30):
            await boss.send_task("broken", "the impossible", timeout=3600)
    # The error is reported after the last attempt, not the first.
    assert attempts == ["the impossible"] * policy.max_attempts
    assert info.value.error_type == "ValueError"
    assert info.value.error_message == "cannot do the impossible"
    assert info.value.agent_id == "broken"


async def test_messages_arriving_while_waiting_are_all_still_received(
    start_agent: Any, queue: MessageQueue
) -> None:
    gate = asyncio.Event()

    class Slow(MessagePassingAgent):
        async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
            await gate.wait()
            return "slow result"

    await start_agent("slow", Slow)
    await queue.ensure_inbox("boss")
    boss = MessagePassingAgent("boss", queue)
    pending = asyncio.create_task(boss.send_task("slow", "take your time", timeout=10))
    for i in range(5):
        await queue.send(Message(sender="other", recipient="boss", content=i))
    gate.set()
    assert await pending == "slow result"
    got = await queue.receive_all("boss")
    assert [m.content for m in got] == [0, 1, 2, 3, 4]


async def test_handler_failing_twice_then_succeeding_is_retried(
    start_agent: Any, queue: MessageQueue
) -> None:
    attempts: list[int] = []

    class Flaky(MessagePassingAgent):
        async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
            attempts.append(1)
            if len(attempts) < 3:
                raise ConnectionError("flaky upstream")
            return "third time lucky"

    await start_agent("flaky", Flaky)
    boss = MessagePassingAgent("boss", queue)
    assert await boss.send_task("flaky", "try", timeout=10) == "third time lucky"
    assert len(attempts) == 3


async def test_handler_that_always_fails_ends_in_dead_letters_with_headers(
    start_agent: Any, queue: MessageQueue, raw_channel: Any, namespace: str
) -> None:
    calls: list[int] = []

    class Hopeless(MessagePassingAgent):
        async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
            calls.append(1)
            raise RuntimeError("no way")

    await start_agent("hopeless", Hopeless, retry=RetryPolicy(max_attempts=4, delays_s=(0.05,)))
    await queue.send(
        Message(
            sender="boss", recipient="hopeless", type=MessageType.TASK, content={"description": "x"}
        )
    )
    [corpse] = await dead_letters(raw_channel, namespace, 1)
    headers = corpse.headers
    assert headers[wire.H_DEAD_AGENT] == "hopeless"
    assert headers[wire.H_DEAD_ERROR_TYPE] == "RuntimeError"
    assert headers[wire.H_DEAD_ERROR_MESSAGE] == "no way"
    assert headers[wire.H_DEAD_ATTEMPTS] == 4
    assert headers[wire.H_DEAD_REASON] == "handler failed"
    assert len(calls) == 4


async def test_undecodable_message_is_dead_lettered_and_agent_goes_on(
    start_agent: Any, queue: MessageQueue, raw_channel: Any, namespace: str
) -> None:
    handled = asyncio.Event()
    agent: MessagePassingAgent = await start_agent("robust")

    @agent.on(MessageType.NOTIFICATION)
    async def note(message: Message) -> None:
        handled.set()

    exchange = await raw_channel.get_exchange(namespace)
    await exchange.publish(
        aio_pika.Message(b"\x80\x04pickle", content_type="application/python-pickle", priority=4),
        routing_key="notification.4.x.robust",
    )
    await queue.send(Message(sender="x", recipient="robust", content="fine"))
    await asyncio.wait_for(handled.wait(), 10)
    [corpse] = await dead_letters(raw_channel, namespace, 1)
    assert corpse.body == b"\x80\x04pickle"
    assert "undecodable" in str(corpse.headers[wire.H_DEAD_REASON])


async def test_stop_during_slow_handler_finishes_it_and_loses_nothing(
    queue: MessageQueue,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[int] = []

    class Slow(MessagePassingAgent):
        async def _process_request(self, request: Any) -> Any:
            started.set()
            await release.wait()
            finished.append(request)
            return request

    agent = Slow("slowpoke", queue, concurrency=1)
    await agent.start_consuming()
    for i in range(3):
        await queue.send(
            Message(sender="x", recipient="slowpoke", type=MessageType.REQUEST, content=i)
        )
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.create_task(agent.stop())
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert finished == [0]
    # The two it had not started are still in the inbox.
    assert [m.content for m in await queue.receive_all("slowpoke")] == [1, 2]


async def test_stop_cancels_handlers_past_the_drain_timeout_and_requeues(
    queue: MessageQueue,
) -> None:
    started = asyncio.Event()

    class Stuck(MessagePassingAgent):
        async def _process_request(self, request: Any) -> Any:
            started.set()
            await asyncio.Event().wait()

    agent = Stuck("stuck", queue, concurrency=1, drain_timeout_s=0.2)
    await agent.start_consuming()
    await queue.send(Message(sender="x", recipient="stuck", type=MessageType.REQUEST, content=7))
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(agent.stop(), 10)
    back = await queue.receive("stuck", timeout=5)
    assert back is not None and back.content == 7


async def test_foreign_client_gets_result_in_its_own_reply_queue(
    start_agent: Any, raw_channel: aio_pika.abc.AbstractChannel, namespace: str, amqp_url: str
) -> None:
    await start_agent("worker")
    reply_queue = await raw_channel.declare_queue(exclusive=True)
    request_id = str(uuid.uuid4())
    exchange = await raw_channel.get_exchange(namespace)
    await exchange.publish(
        aio_pika.Message(
            json.dumps({"description": "from outside", "context": {}}).encode(),
            content_type="application/json",
            message_id=request_id,
            reply_to=reply_queue.name,
            type="task",
            priority=2,
            user_id=connection_user(amqp_url),  # the user it connects as: authentic
        ),
        routing_key="task.2.-.worker",
    )
    async with asyncio.timeout(10):
        async with reply_queue.iterator() as it:
            async for incoming in it:
                await incoming.ack()
                break
    assert incoming.correlation_id == request_id
    assert incoming.type == "result"
    assert json.loads(incoming.body) == {"task": "from outside", "context": {}}


async def test_status_reports_reach_the_requester_before_the_result(
    start_agent: Any, queue: MessageQueue
) -> None:
    class Reporter(MessagePassingAgent):
        async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
            for pct in (25, 50, 100):
                await self.send_status({"progress": pct})
            return "report done"

    await start_agent("reporter", Reporter)
    boss = MessagePassingAgent("boss", queue)
    seen: list[Any] = []
    result = await boss.send_task(
        "reporter", "report", timeout=10, on_status=lambda m: seen.append(m.content)
    )
    assert result == "report done"
    assert seen == [{"progress": 25}, {"progress": 50}, {"progress": 100}]


async def test_wait_for_result_false_returns_a_handle(
    start_agent: Any, queue: MessageQueue
) -> None:
    await start_agent("worker")
    boss = MessagePassingAgent("boss", queue)
    handle = await boss.send_task("worker", "later", wait_for_result=False, timeout=10)
    assert isinstance(handle, TaskHandle)
    assert (await handle.result())["task"] == "later"


async def test_send_task_to_unknown_agent_raises(queue: MessageQueue) -> None:
    boss = MessagePassingAgent("boss", queue)
    with pytest.raises(UnknownRecipientError):
        await boss.send_task("ghost", "boo", timeout=5)


async def test_duplicates_are_suppressed_within_the_window(
    start_agent: Any, queue: MessageQueue
) -> None:
    effects: list[Any] = []
    done = asyncio.Event()
    agent: MessagePassingAgent = await start_agent("once", dedup_window=100)

    @agent.on(MessageType.NOTIFICATION)
    async def note(message: Message) -> None:
        effects.append(message.content)
        if message.content == "last":
            done.set()

    dup = Message(sender="x", recipient="once", content="effect")
    await queue.send(dup)
    await queue.send(dup)  # a redelivered duplicate: same id
    await queue.send(Message(sender="x", recipient="once", content="last"))
    await asyncio.wait_for(done.wait(), 10)
    assert effects == ["effect", "last"]


@dataclass
class _Choice:
    message: Any


class FakeLLM:
    """Duck-typed OpenAI-compatible client: records prompts, answers in upper case."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.chat = self
        self.completions = self

    async def create(self, *, model: str, messages: list[dict[str, str]]) -> Any:
        self.calls.append({"model": model, "messages": messages})

        @dataclass
        class Msg:
            content: str

        @dataclass
        class Response:
            choices: list[_Choice]

        return Response([_Choice(Msg(messages[-1]["content"].upper()))])


async def test_default_process_task_calls_the_llm_client(
    start_agent: Any, queue: MessageQueue
) -> None:
    llm = FakeLLM()
    await start_agent("llm", MessagePassingAgent, llm_client=llm, model="tiny-model")
    boss = MessagePassingAgent("boss", queue)
    result = await boss.send_task("llm", "summarise", {"topic": "queues"}, timeout=10)
    assert "SUMMARISE" in result and "TOPIC: QUEUES" in result
    assert llm.calls[0]["model"] == "tiny-model"


async def test_without_llm_client_the_requester_gets_a_clear_remote_error(
    start_agent: Any, queue: MessageQueue
) -> None:
    await start_agent("nollm", MessagePassingAgent)
    boss = MessagePassingAgent("boss", queue)
    with pytest.raises(RemoteError) as info:
        await boss.send_task("nollm", "think", timeout=10)
    assert info.value.error_type == HandlerError.__name__
    assert "llm_client" in info.value.error_message


async def test_handler_sending_a_subtask_does_not_deadlock_its_inbox(
    start_agent: Any, queue: MessageQueue
) -> None:
    """concurrency=1 and the handler waits for a sub-task: replies bypass the inbox."""

    class Delegator(MessagePassingAgent):
        async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
            sub = await self.send_task("helper", f"sub of {task}", timeout=10)
            return f"delegated: {sub['task']}"

    await start_agent("helper")
    await start_agent("delegator", Delegator, concurrency=1)
    boss = MessagePassingAgent("boss", queue)
    results = await asyncio.gather(
        *(boss.send_task("delegator", f"t{i}", timeout=20) for i in range(3))
    )
    assert results == ["delegated: sub of t0", "delegated: sub of t1", "delegated: sub of t2"]


async def test_urgent_tasks_overtake_waiting_low_ones(
    start_agent: Any, queue: MessageQueue
) -> None:
    order: list[str] = []
    await queue.ensure_inbox("prio")
    for i in range(3):
        await queue.send(
            Message(
                sender="x",
                recipient="prio",
                type=MessageType.NOTIFICATION,
                priority=MessagePriority.LOW,
                content=f"low{i}",
            )
        )
    await queue.send(
        Message(
            sender="x",
            recipient="prio",
            type=MessageType.NOTIFICATION,
            priority=MessagePriority.URGENT,
            content="urgent",
        )
    )
    done = asyncio.Event()
    agent = MessagePassingAgent("prio", queue, concurrency=1)

    @agent.on(MessageType.NOTIFICATION)
    async def note(message: Message) -> None:
        order.append(message.content)
        if len(order) == 4:
            done.set()

    await agent.start_consuming()
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await agent.stop()
    assert order == ["urgent", "low0", "low1", "low2"]
