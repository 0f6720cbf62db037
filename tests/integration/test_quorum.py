"""Quorum inboxes on a real broker: lanes keep priority, a message that kills its
agent is dead-lettered after the delivery limit, replicas share an inbox, and an agent
waits out an unavailable inbox instead of stopping."""

from __future__ import annotations

import asyncio
import collections
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from amqp_agents import (
    Message,
    MessagePassingAgent,
    MessagePriority,
    MessageQueue,
    MessageType,
    QueueUnavailableError,
    TopologyError,
    wire,
)

from .conftest import Spawn

MakeQueue = Callable[..., Awaitable[MessageQueue]]
RUNNING = "agent(s) running in namespace"


def note(agent_id: str, priority: MessagePriority, content: str) -> Message:
    return Message(
        sender="x",
        recipient=agent_id,
        type=MessageType.NOTIFICATION,
        priority=priority,
        content=content,
    )


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_backlog_of_low_is_overtaken_by_every_urgent(
    make_queue: MakeQueue, queue_type: str
) -> None:
    """200 LOW wait, then 20 URGENT arrive: every URGENT is handled before the LOW
    still waiting; only what the agent already had in hand (``concurrency``) is not
    overtaken."""
    concurrency = 4
    queue = await make_queue(queue_type=queue_type)
    await queue.ensure_inbox("prio")
    for i in range(200):
        await queue.send(note("prio", MessagePriority.LOW, f"low{i}"))
    for i in range(20):
        await queue.send(note("prio", MessagePriority.URGENT, f"urgent{i}"))
    order: list[str] = []
    done = asyncio.Event()
    agent = MessagePassingAgent("prio", queue, concurrency=concurrency)

    @agent.on(MessageType.NOTIFICATION)
    async def handle(message: Message) -> None:
        order.append(str(message.content))
        await asyncio.sleep(0.002)  # a handler's work: longer than a broker round trip
        if len(order) == 220:
            done.set()

    await agent.start_consuming()
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await agent.stop()
    last_urgent = max(i for i, content in enumerate(order) if content.startswith("urgent"))
    low_before = [c for c in order[:last_urgent] if c.startswith("low")]
    assert len(low_before) <= concurrency, low_before
    assert [c for c in order if c.startswith("urgent")] == [f"urgent{i}" for i in range(20)]


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_receive_all_takes_every_lane_highest_first(
    make_queue: MakeQueue, queue_type: str
) -> None:
    queue = await make_queue(queue_type=queue_type)
    await queue.ensure_inbox("bob")
    sent = [
        (MessagePriority.LOW, "a"),
        (MessagePriority.HIGH, "b"),
        (MessagePriority.NORMAL, "c"),
        (MessagePriority.URGENT, "d"),
        (MessagePriority.LOW, "e"),
    ]
    for priority, content in sent:
        await queue.send(note("bob", priority, content))
    got = await queue.receive_all("bob")
    assert [m.content for m in got] == ["d", "b", "c", "a", "e"]
    await queue.send(note("bob", MessagePriority.LOW, "low"))
    await queue.send(note("bob", MessagePriority.URGENT, "urgent"))
    first = await queue.receive("bob", timeout=5)
    assert first is not None and first.content == "urgent"


async def test_quorum_is_the_default_and_every_durable_queue_replicates(
    queue: MessageQueue, raw_channel: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    """Declared with these arguments, the broker took them: redeclaring them passes."""
    assert queue.options.queue_type == "quorum"
    await queue.ensure_inbox("bob")
    for name in queue.inbox_queue_names("bob"):
        await raw_channel.declare_queue(
            name, durable=True, arguments=wire.inbox_arguments(namespace)
        )
    dead = wire.dead_queue_name(namespace)
    await raw_channel.declare_queue(dead, durable=True, arguments={"x-queue-type": "quorum"})


async def test_a_foreign_publish_with_a_priority_word_no_lane_takes_is_returned(
    queue: MessageQueue, raw_channel: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    """Lanes are bound with the words 1-4 and history with the same keys: a key with
    another priority word reaches no queue, so the sender learns it (not a confirm
    from history alone)."""
    await queue.ensure_inbox("bob")
    channel = await queue.connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(namespace, ensure=False)
    try:
        with pytest.raises(aio_pika.exceptions.PublishError):
            await exchange.publish(
                aio_pika.Message(b"{}", content_type="application/json"),
                routing_key="notification.9.x.bob",
                mandatory=True,
            )
        await exchange.publish(  # the word 2 is taken: confirmed, not returned
            aio_pika.Message(b"{}", content_type="application/json"),
            routing_key="notification.2.x.bob",
            mandatory=True,
        )
    finally:
        await channel.close()


async def test_an_agent_waits_out_an_unavailable_inbox_and_serves_again(
    queue: MessageQueue,
    raw_channel: aio_pika.abc.AbstractChannel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker cancels the consumers (the inbox is gone) and declaring it again
    fails as unavailable (a node down, a leader being elected) for a while: the agent
    retries instead of stopping, and serves once the inbox is back."""
    received: asyncio.Queue[Any] = asyncio.Queue()
    agent = MessagePassingAgent("svc", queue, concurrency=2)

    @agent.on(MessageType.NOTIFICATION)
    async def handle(message: Message) -> None:
        received.put_nowait(message.content)

    restore = queue.restore_inbox
    refusals = 0
    restored = asyncio.Event()

    async def unavailable_twice(agent_id: str) -> None:
        nonlocal refusals
        if refusals < 2:
            refusals += 1
            raise QueueUnavailableError("home node 'rabbit@b' is down or inaccessible")
        await restore(agent_id)
        restored.set()

    monkeypatch.setattr(queue, "restore_inbox", unavailable_twice)
    await agent.start_consuming()
    try:
        for name in queue.inbox_queue_names("svc"):
            await raw_channel.queue_delete(name, if_unused=False, if_empty=False)
        async with asyncio.timeout(20):
            # Sent before, it would reach history only: a deleted inbox's bindings go.
            await restored.wait()
            await queue.send(note("svc", MessagePriority.NORMAL, "after"))
            assert await received.get() == "after"
        assert refusals == 2
        assert agent.running and agent.error is None
    finally:
        await agent.stop()


@pytest.mark.rabbitmq_only(reason="its agents run as `amqp-agents run` subprocesses")
async def test_a_message_that_kills_its_agent_is_dead_lettered_after_the_delivery_limit(
    spawn: Spawn,
    config_file: Callable[[str], Path],
    queue: MessageQueue,
    raw_channel: aio_pika.abc.AbstractChannel,
    namespace: str,
) -> None:
    limit = 2
    config = config_file(
        f"""
        broker: {{url: "${{AMQP_URL}}", namespace: "${{AMQP_NAMESPACE}}"}}
        agents:
          - id: victim
            class: "integration.probe_agents:PoisonedAgent"
            inbox: {{delivery_limit: {limit}}}
        """
    )
    # The inbox as the file declares it (its delivery limit), then the poison.
    first = await spawn("run", str(config))
    await first.expect(RUNNING)
    await queue.send(
        Message(sender="x", recipient="victim", type=MessageType.TASK, content="poison")
    )
    deaths = [first]
    for _ in range(limit):  # each run dies on it, until it was delivered `limit` times
        # (a restarted run may get the poison before it reports running: no expect here)
        assert await deaths[-1].finish() == 3, deaths[-1].output
        deaths.append(await spawn("run", str(config)))
    await deaths[-1].expect(RUNNING)
    dead = await raw_channel.get_queue(wire.dead_queue_name(namespace), ensure=False)
    letters: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    await dead.consume(letters.put, no_ack=True)
    letter = await asyncio.wait_for(letters.get(), 20)
    x_death = letter.headers["x-death"]
    assert isinstance(x_death, list) and isinstance(x_death[0], dict)
    assert x_death[0]["reason"] == "delivery_limit"
    assert json.loads(letter.body) == "poison"
    # Delivered `limit` times, each killing its process; the last one serves on.
    assert [("dying on poison" in d.output) for d in deaths] == [True] * limit + [False]
    await queue.send(note("victim", MessagePriority.NORMAL, "harmless"))
    with pytest.raises(TimeoutError):
        await deaths[-1].finish(timeout_s=2)


@pytest.mark.rabbitmq_only(reason="its agents run as `amqp-agents run` subprocesses")
async def test_three_replicas_share_an_inbox_and_each_task_is_handled_once(
    spawn: Spawn, config_file: Callable[[str], Path], queue: MessageQueue, namespace: str
) -> None:
    config = config_file(
        """
        broker: {url: "${AMQP_URL}", namespace: "${AMQP_NAMESPACE}"}
        agents:
          - {id: svc, class: "integration.probe_agents:ReplicaAgent", concurrency: 2}
        """
    )
    replicas = [await spawn("run", str(config)) for _ in range(3)]
    for replica in replicas:
        await replica.expect(RUNNING)
    boss = MessagePassingAgent("boss", queue)
    n = 90
    results = await asyncio.gather(*(boss.send_task("svc", f"t{i}", timeout=60) for i in range(n)))
    assert sorted(r["task"] for r in results) == sorted(f"t{i}" for i in range(n))
    for replica in replicas:
        replica.process.terminate()
        assert await replica.finish() == 0, replica.output
    handled = collections.Counter(
        task for r in replicas for task in re.findall(r"^handled (t\d+) in", r.output, re.M)
    )
    assert handled == collections.Counter(f"t{i}" for i in range(n)), "each once"
    answered_by = {r["pid"] for r in results}
    assert len(answered_by) >= 2, "the replicas shared the work"


@pytest.mark.parametrize(("first", "second"), [("quorum", "classic"), ("classic", "quorum")])
async def test_a_process_of_the_other_queue_type_fails_at_connect(
    make_queue: MakeQueue, first: str, second: str
) -> None:
    """Moving a namespace (docs/deploy.md): a process left with the old type cannot
    run on the new layout unnoticed."""
    await make_queue(queue_type=first)
    with pytest.raises(TopologyError, match="x-queue-type"):
        await make_queue(queue_type=second)
