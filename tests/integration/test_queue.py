"""MessageQueue against a real RabbitMQ: round trips, priority, errors, taps, history."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aio_pika
import pytest

from amqp_agents import (
    Message,
    MessagePriority,
    MessageQueue,
    MessageType,
    NoRouteError,
    UnknownRecipientError,
    create_result_message,
    create_task_message,
    wire,
)
from amqp_agents.senders import connection_user

MakeQueue = Callable[..., Awaitable[MessageQueue]]


async def test_message_round_trips_with_every_field(queue: MessageQueue) -> None:
    await queue.ensure_inbox("bob")
    sent = Message(
        sender="alice",
        recipient="bob",
        type=MessageType.REQUEST,
        priority=MessagePriority.HIGH,
        content={"q": "ünïcode ✓", "n": [1, 2.5, None, True]},
        metadata={"trace": "abc", "nested": {"k": [1, 2]}},
        timestamp=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        reply_to="some-earlier-id",
        conversation_id="conv-1",
    )
    await queue.send(sent)
    got = await queue.receive("bob", timeout=5)
    assert got == sent


async def test_unknown_recipient_raises(queue: MessageQueue) -> None:
    with pytest.raises(UnknownRecipientError) as info:
        await queue.send(Message(sender="alice", recipient="nobody", content="hi"))
    assert info.value.recipient == "nobody"


async def test_recipientless_message_without_route_raises(queue: MessageQueue) -> None:
    with pytest.raises(NoRouteError):
        await queue.send(Message(sender="alice", content="to whom it may concern"))


async def test_receive_times_out_with_none(queue: MessageQueue) -> None:
    assert await queue.receive("idle", timeout=0.2) is None


async def test_priority_order_is_honoured(queue: MessageQueue) -> None:
    await queue.ensure_inbox("worker")
    order = [
        MessagePriority.LOW,
        MessagePriority.NORMAL,
        MessagePriority.HIGH,
        MessagePriority.URGENT,
        MessagePriority.LOW,
    ]
    for i, prio in enumerate(order):
        await queue.send(Message(sender="boss", recipient="worker", priority=prio, content=i))
    got = await queue.receive_all("worker")
    assert [m.priority for m in got] == sorted(order, reverse=True)
    # Within one priority, FIFO.
    assert [m.content for m in got if m.priority is MessagePriority.LOW] == [0, 4]
    assert await queue.receive_all("worker") == []


async def test_receive_takes_urgent_before_earlier_low(queue: MessageQueue) -> None:
    await queue.ensure_inbox("w")
    await queue.send(Message(sender="a", recipient="w", priority=MessagePriority.LOW, content=1))
    await queue.send(Message(sender="a", recipient="w", priority=MessagePriority.URGENT, content=2))
    first = await queue.receive("w", timeout=5)
    assert first is not None and first.content == 2


async def test_subscribe_sees_copies_and_leaves_inbox_intact(queue: MessageQueue) -> None:
    seen: list[Message] = []
    two = asyncio.Event()

    async def tap(message: Message) -> None:
        seen.append(message)
        if len(seen) == 2:
            two.set()

    sub = await queue.subscribe("bob", tap)
    sent = [Message(sender="alice", recipient="bob", content=i) for i in range(2)]
    for m in sent:
        await queue.send(m)
    await asyncio.wait_for(two.wait(), 5)
    await sub.cancel()
    assert [m.id for m in seen] == [m.id for m in sent]
    assert [m.id for m in await queue.receive_all("bob")] == [m.id for m in sent]


async def test_conversation_history_survives_reopening(make_queue: MakeQueue) -> None:
    first = await make_queue()
    await first.ensure_inbox("researcher")
    await first.ensure_inbox("coordinator")
    task = create_task_message("coordinator", "researcher", "look into queues")
    result = create_result_message("researcher", "coordinator", "queues are nice", task)
    other = create_task_message("coordinator", "researcher", "unrelated")
    await first.send(task)
    await first.send(other)
    await first.send(result)
    await first.close()

    second = await make_queue()
    conversation = await second.get_conversation(task.conversation_id or "")
    assert [m.id for m in conversation] == [task.id, result.id]
    assert conversation[1].reply_to == task.id
    history = await second.get_agent_history("researcher")
    assert [m.id for m in history] == [task.id, other.id, result.id]


async def test_foreign_client_following_the_docs_reaches_an_inbox(
    queue: MessageQueue, raw_channel: aio_pika.abc.AbstractChannel, namespace: str, amqp_url: str
) -> None:
    """Publish as docs/wire-format.md says, with only the required pieces."""
    await queue.ensure_inbox("bob")
    exchange = await raw_channel.get_exchange(namespace)
    await exchange.publish(
        aio_pika.Message(
            json.dumps({"hello": "from elsewhere"}).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=3,
            type="request",
            user_id=connection_user(amqp_url),  # the user it connects as: authentic
        ),
        routing_key="request.3.legacy-svc.bob",
    )
    got = await queue.receive("bob", timeout=5)
    assert got is not None
    assert got.content == {"hello": "from elsewhere"}
    assert got.sender == "legacy-svc"
    assert got.recipient == "bob"
    assert got.type is MessageType.REQUEST
    assert got.priority is MessagePriority.HIGH
    assert got.id  # a default id was given


@pytest.mark.parametrize(
    ("user_id", "believed"),
    [("the connection's user", True), (None, False)],
    ids=["same user", "no user_id"],
)
async def test_by_default_a_sender_is_believed_only_with_a_user_id(
    queue: MessageQueue,
    raw_channel: aio_pika.abc.AbstractChannel,
    namespace: str,
    amqp_url: str,
    user_id: str | None,
    believed: bool,
) -> None:
    """The default settings: a foreign message claiming a sender is refused without a
    user_id, and believed with the user_id of the user we connect as (rule b)."""
    await queue.ensure_inbox("bob")
    exchange = await raw_channel.get_exchange(namespace)
    claimed = aio_pika.Message(
        b'"claims to be legacy-svc"',
        content_type="application/json",
        priority=2,
        message_id="claimed",
        user_id=connection_user(amqp_url) if user_id else None,
        headers={wire.H_SENDER: "legacy-svc"},
    )
    await exchange.publish(claimed, routing_key="notification.2.legacy-svc.bob")
    after = Message(sender="alice", recipient="bob", content="after it")  # same priority
    await queue.send(after)
    first = await queue.receive("bob", timeout=5)
    assert first is not None
    if believed:
        assert (first.id, first.sender) == ("claimed", "legacy-svc")
        return
    assert first.id == after.id, "the claim was believed"
    dead = await raw_channel.get_queue(wire.dead_queue_name(namespace))
    corpse = await dead.get(timeout=5)
    assert corpse is not None
    await corpse.ack()
    assert corpse.message_id == "claimed"
    reason = str(corpse.headers[wire.H_DEAD_REASON])
    assert reason.startswith("unauthenticated sender: no user_id"), reason


async def test_trusting_the_sender_word_is_said_at_connect(
    make_queue: MakeQueue,
    raw_channel: aio_pika.abc.AbstractChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trusting = await make_queue(trust_sender_word=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("trust_sender_word is on" in r.getMessage() for r in warnings), warnings
    await trusting.ensure_inbox("bob")
    exchange = await raw_channel.get_exchange(trusting.namespace)
    await exchange.publish(
        aio_pika.Message(b'"hi"', content_type="application/json", headers={"x-sender": "eve"}),
        routing_key="notification.2.eve.bob",
    )
    got = await trusting.receive("bob", timeout=5)
    assert got is not None and got.sender == "eve"  # believed without a user_id


async def test_library_message_reads_correctly_in_a_foreign_client(
    queue: MessageQueue, raw_channel: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    inbox = await queue.ensure_inbox("bob")
    sent = Message(
        sender="alice",
        recipient="bob",
        type=MessageType.TASK,
        priority=MessagePriority.URGENT,
        content={"description": "x"},
        metadata={"m": 1},
        reply_to="prev",
        conversation_id="c9",
    )
    await queue.send(sent)
    raw_queue = await raw_channel.get_queue(inbox.name)
    incoming = await raw_queue.get(timeout=5)
    assert incoming is not None
    await incoming.ack()
    assert incoming.routing_key == "task.4.alice.bob"
    assert incoming.exchange == namespace
    assert incoming.message_id == sent.id
    assert incoming.correlation_id == "prev"
    assert incoming.type == "task"
    assert incoming.priority == 4
    assert incoming.content_type == "application/json"
    assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert json.loads(incoming.body) == {"description": "x"}
    headers = incoming.headers
    assert headers["x-sender"] == "alice"
    assert headers["x-recipient"] == "bob"
    assert headers["x-conversation-id"] == "c9"
    assert json.loads(str(headers["x-metadata"])) == {"m": 1}
    assert incoming.timestamp is not None
    assert int(incoming.timestamp.timestamp()) == int(sent.timestamp.timestamp())


async def test_undecodable_message_goes_to_dead_letters_and_receive_goes_on(
    queue: MessageQueue, raw_channel: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    await queue.ensure_inbox("bob")
    exchange = await raw_channel.get_exchange(namespace)
    await exchange.publish(
        aio_pika.Message(b"\x80not json", priority=4), routing_key="task.4.x.bob"
    )
    await queue.send(Message(sender="alice", recipient="bob", content="fine"))
    got = await queue.receive("bob", timeout=5)
    assert got is not None and got.content == "fine"
    dead = await raw_channel.get_queue(wire.dead_queue_name(namespace))
    corpse = await dead.get(timeout=5)
    assert corpse is not None
    await corpse.ack()
    assert corpse.body == b"\x80not json"
    assert "undecodable" in str(corpse.headers[wire.H_DEAD_REASON])


async def test_inbox_declaration_is_idempotent_across_clients(make_queue: MakeQueue) -> None:
    a = await make_queue()
    b = await make_queue()
    await a.ensure_inbox("same")
    await b.ensure_inbox("same")
    await a.send(Message(sender="x", recipient="same", content=1))
    got = await b.receive("same", timeout=5)
    assert got is not None and got.content == 1


async def test_inboxes_declared_together_are_all_declared_and_bound(queue: MessageQueue) -> None:
    # Agents starting together spread their declarations over several channels.
    ids = [f"crowd{k}" for k in range(40)]
    await asyncio.gather(*(queue.ensure_inbox(agent_id) for agent_id in ids))
    for agent_id in ids:
        await queue.send(Message(sender="crowd-sender", recipient=agent_id, content=agent_id))
    for agent_id in ids:
        got = await queue.receive(agent_id, timeout=5)
        assert got is not None and got.content == agent_id
