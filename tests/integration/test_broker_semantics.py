"""What users rely on the broker for, checked on both brokers (RabbitMQ and memory://):
AMQP's topic rules, a full inbox refusing a send, and a message that outlives its
deadline dead-lettered by the broker with RabbitMQ's ``x-death`` headers.

An in-memory broker that drifts from RabbitMQ here (FastStream's took ``#`` for one or
more words) would make users' tests pass for code that fails in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest
from aio_pika.exceptions import ChannelPreconditionFailed

from amqp_agents import InboxFullError, Message, MessageQueue, wire

MakeQueue = Callable[..., Awaitable[MessageQueue]]

PATTERNS = ("a.#", "#.a", "a.#.b", "#", "a.*", "*.b", "*", "a.*.c", "*.#.*", "a.b")
KEYS = ("a", "", "a.", ".b", "a.b", "a..c", "a.x.y.b", "b.a", "a.b.c", "x")
# What RabbitMQ answers (each pattern's keys); the memory broker must answer the same.
EXPECTED = {
    "a.#": {"a", "a.", "a.b", "a..c", "a.x.y.b", "a.b.c"},
    "#.a": {"a", "b.a"},
    "a.#.b": {"a.b", "a.x.y.b"},
    "#": set(KEYS),
    "a.*": {"a.", "a.b"},
    "*.b": {".b", "a.b"},
    "*": {"a", "x"},  # the empty key has no words
    "a.*.c": {"a..c", "a.b.c"},
    "*.#.*": {"a.", ".b", "a.b", "a..c", "a.x.y.b", "b.a", "a.b.c"},
    "a.b": {"a.b"},
}


async def test_topic_patterns_route_by_amqps_rules(
    raw_channel: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    exchange = await raw_channel.declare_exchange(
        f"{namespace}.topics", aio_pika.ExchangeType.TOPIC, auto_delete=True
    )
    queues: dict[str, aio_pika.abc.AbstractQueue] = {}
    try:
        for index, pattern in enumerate(PATTERNS):
            queue = await raw_channel.declare_queue(f"{namespace}.topic{index}", exclusive=True)
            await queue.bind(exchange, pattern)
            queues[pattern] = queue
        for key in KEYS:
            await exchange.publish(aio_pika.Message(key.encode()), routing_key=key)
        got: dict[str, set[str]] = {}
        for pattern, queue in queues.items():
            got[pattern] = set()
            while (incoming := await queue.get(no_ack=True, fail=False)) is not None:
                got[pattern].add(incoming.body.decode())
    finally:
        for queue in queues.values():
            await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
    assert got == EXPECTED


@pytest.mark.parametrize(("queue_type", "kept"), [("quorum", 3), ("classic", 2)])
async def test_a_full_inbox_refuses_a_send_and_keeps_what_it_has(
    make_queue: MakeQueue, queue_type: str, kept: int
) -> None:
    """``inbox_max_length=2``; RabbitMQ's quorum queues take one message over the limit
    before they refuse (measured on RabbitMQ 3.10), classic queues none."""
    queue = await make_queue(queue_type=queue_type, inbox_max_length=2)
    await queue.ensure_inbox("bob")
    for n in range(kept):
        await queue.send(Message(sender="alice", recipient="bob", content=n))

    for _ in range(2):
        with pytest.raises(InboxFullError):
            await queue.send(Message(sender="alice", recipient="bob", content="one too many"))

    assert [m.content for m in await queue.receive_all("bob")] == list(range(kept))
    await queue.send(Message(sender="alice", recipient="bob", content="room again"))


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_message_past_its_deadline_is_dead_lettered_as_expired(
    make_queue: MakeQueue,
    raw_channel: aio_pika.abc.AbstractChannel,
    namespace: str,
    queue_type: str,
) -> None:
    queue = await make_queue(queue_type=queue_type)
    await queue.ensure_inbox("bob")
    dead = await raw_channel.get_queue(wire.dead_queue_name(namespace), ensure=False)
    letters: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    await dead.consume(letters.put, no_ack=True)
    message = Message(sender="alice", recipient="bob", content="late")

    await queue.send(message, deadline=datetime.now(UTC) + timedelta(milliseconds=300))

    letter = await asyncio.wait_for(letters.get(), 20)
    assert letter.message_id == message.id
    death = letter.headers["x-death"]
    assert isinstance(death, list) and isinstance(death[0], dict)
    inbox = queue.inbox_queue_names("bob")[-1]
    assert (death[0]["reason"], death[0]["queue"], death[0]["count"]) == ("expired", inbox, 1)
    assert death[0]["exchange"] == namespace
    assert letter.headers["x-first-death-reason"] == "expired"
    assert letter.expiration is None  # RabbitMQ moves it into x-death
    assert "original-expiration" in death[0]
    assert await queue.receive_all("bob") == []


async def test_a_quorum_lane_dead_letters_a_message_returned_past_its_delivery_limit(
    make_queue: MakeQueue, raw_channel: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    """A message given back (nack with requeue: its consumer could not take it) is
    delivered ``delivery_limit`` times, counted in ``x-delivery-count``, then moved to
    the dead letters with reason ``delivery_limit``."""
    queue = await make_queue(queue_type="quorum", inbox_delivery_limit=3)
    await queue.ensure_inbox("bob")
    dead = await raw_channel.get_queue(wire.dead_queue_name(namespace), ensure=False)
    letters: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    await dead.consume(letters.put, no_ack=True)
    counts: list[object] = []

    async def give_back(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
        counts.append((incoming.headers or {}).get("x-delivery-count"))
        await incoming.nack(requeue=True)

    lane = await raw_channel.get_queue(queue.inbox_queue_names("bob")[-1], ensure=False)
    await lane.consume(give_back)
    await queue.send(Message(sender="alice", recipient="bob", content="hot potato"))

    letter = await asyncio.wait_for(letters.get(), 20)
    assert letter.headers["x-death"][0]["reason"] == "delivery_limit"  # type: ignore[index,call-overload]
    assert counts == [None, 1, 2]


async def test_a_publish_claiming_another_user_is_refused_by_the_broker(
    queue: MessageQueue, connect_raw: Callable[[str], Awaitable[Any]], amqp_url: str
) -> None:
    """``user_id`` is the identity senders.py trusts because the broker checks it."""
    await queue.ensure_inbox("bob")
    connection = await connect_raw(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(queue.namespace)
        forged = aio_pika.Message(b'"hi"', user_id="mallory", content_type="application/json")
        with pytest.raises(ChannelPreconditionFailed, match="user_id"):
            await exchange.publish(forged, routing_key="notification.2.mallory.bob")
    finally:
        await connection.close()
    assert await queue.receive_all("bob") == []
