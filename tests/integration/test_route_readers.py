"""An inbox holds exactly what its routes send there, whoever reads it (issue 12, item 11).

One destination per pattern form (and one for a filtered route), so each inbox's rules
are one route. Every combination of type, priority and sender is sent without
recipient; then each reader (a RoutingMessageQueue's receive, a plain MessageQueue's
receive_all, a tap, a raw AMQP consumer) must get exactly the messages the route
takes: what is in the inbox is exact, no consumer-side sorting involved.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest

from amqp_agents import (
    Message,
    MessagePriority,
    MessageQueue,
    MessageRouter,
    MessageType,
    RoutingMessageQueue,
    wire,
)
from amqp_agents.routing import compile_rule
from amqp_agents.topology import delete_namespace

KNOWN = ["alice", "bob", "writer", "writer-2", "wrangler"]
"""The known agents (a configuration's agents and external agents)."""
RULES = {
    "*": "all-reader",
    "type:task": "task-reader",
    "priority:4": "urgent-reader",
    "sender:bob": "bob-reader",
    "sender:writer*": "writers-reader",
    "type:notification": "filtered-reader",
}


def from_a_writer(message: Message) -> bool:
    """The filter of the ``type:notification`` route: the broker cannot run it."""
    return message.sender.startswith("w")


def _keep_all(message: Message) -> bool:
    return True


FILTERS = {"type:notification": from_a_writer}
SENDERS = [*KNOWN, "writer-3"]
"""writer-3 is unknown: the prefix route neither binds nor predicts its messages."""
TRAFFIC = [
    (kind, priority, sender)
    for kind, priority, sender in itertools.product(
        (MessageType.TASK, MessageType.NOTIFICATION),
        (MessagePriority.NORMAL, MessagePriority.URGENT),
        SENDERS,
    )
]


@pytest.fixture
async def routing_queue(
    amqp_url: str, namespace: str, request: pytest.FixtureRequest
) -> AsyncIterator[RoutingMessageQueue]:
    router = MessageRouter(senders=KNOWN)
    for pattern, destination in RULES.items():
        router.add_route(pattern, [destination])
    for pattern, keep in FILTERS.items():
        router.add_filter(pattern, keep)
    queue = RoutingMessageQueue(
        router, amqp_url, namespace=namespace, connection_name=f"test {request.node.nodeid}"
    )
    await queue.connect()
    try:
        yield queue
    finally:
        channel = await queue.channel()
        await delete_namespace(channel, namespace, sorted(queue.declared_queues))
        await queue.close()


async def _send_traffic(queue: RoutingMessageQueue) -> list[Message]:
    sent = [Message(sender=s, type=t, priority=p, content="routed") for t, p, s in TRAFFIC]
    await asyncio.gather(*(queue.send(m) for m in sent))  # confirmed: in every queue
    return sent


Raw = aio_pika.abc.AbstractChannel
Reader = Callable[[RoutingMessageQueue, str, str, Raw, int], Awaitable[list[Message]]]


async def _left_in(queue: RoutingMessageQueue, raw: Raw, inbox: str) -> int:
    left = 0
    for name in queue.inbox_queue_names(inbox):  # the inbox, or each of its lanes
        declared = await raw.declare_queue(name, passive=True)
        left += declared.declaration_result.message_count or 0
    return left


async def _routing_receive(
    queue: RoutingMessageQueue, inbox: str, ns: str, raw: Raw, expected: int
) -> list[Message]:
    await _send_traffic(queue)
    got: list[Message] = []
    for _ in range(expected):
        message = await queue.receive(inbox, timeout=10)
        assert message is not None, f"only {len(got)} of {expected} arrived"
        got.append(message)
    assert await _left_in(queue, raw, inbox) == 0, "more than the route sends is in the inbox"
    return got


async def _plain_receive_all(
    queue: RoutingMessageQueue, inbox: str, ns: str, raw: Raw, expected: int
) -> list[Message]:
    await _send_traffic(queue)
    async with MessageQueue(queue.url, namespace=ns, passive=True) as plain:
        return await plain.receive_all(inbox)


async def _tap(
    queue: RoutingMessageQueue, inbox: str, ns: str, raw: Raw, expected: int
) -> list[Message]:
    seen: list[Message] = []
    marker = Message(sender="alice", recipient=inbox, content="end of traffic")
    done = asyncio.Event()

    def on_message(message: Message) -> None:
        if message.id == marker.id:
            done.set()
        else:
            seen.append(message)

    tap = await queue.subscribe(inbox, on_message)
    try:
        await _send_traffic(queue)
        await queue.send(marker)  # the tap's queue gets it after every routed copy
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await tap.cancel()
    return seen


async def _raw_consumer(
    queue: RoutingMessageQueue, inbox: str, ns: str, raw: Raw, expected: int
) -> list[Message]:
    await _send_traffic(queue)
    got: list[Message] = []
    for name in queue.inbox_queue_names(inbox):  # the inbox, or each of its lanes
        amqp_queue = await raw.declare_queue(name, passive=True)
        while (incoming := await amqp_queue.get(no_ack=True, fail=False)) is not None:
            got.append(wire.decode(incoming))
    return got


READERS: dict[str, Reader] = {
    "RoutingMessageQueue.receive": _routing_receive,
    "MessageQueue.receive_all": _plain_receive_all,
    "tap": _tap,
    "raw AMQP consumer": _raw_consumer,
}


@pytest.mark.parametrize("pattern", list(RULES))
@pytest.mark.parametrize("reader", list(READERS))
async def test_an_inbox_holds_exactly_what_its_route_sends_there(
    routing_queue: RoutingMessageQueue,
    raw_channel: Raw,
    namespace: str,
    reader: str,
    pattern: str,
) -> None:
    inbox = RULES[pattern]
    rule = compile_rule(pattern, KNOWN)
    keep = FILTERS.get(pattern, _keep_all)
    expected = sorted(
        (t.value, int(p), s)
        for t, p, s in TRAFFIC
        if rule.matches(m := Message(sender=s, type=t, priority=p)) and keep(m)
    )
    assert expected, "the traffic must exercise the pattern"
    read = READERS[reader]
    messages = await read(routing_queue, inbox, namespace, raw_channel, len(expected))
    assert sorted((m.type.value, int(m.priority), m.sender) for m in messages) == expected
