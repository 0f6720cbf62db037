"""Routes on a real RabbitMQ: what the broker delivers is what the router predicts.

The routes come from a YAML file, as in production. For every message of a table that
covers each pattern form, filters and transforms, each destination inbox receives
exactly the messages ``router.get_destinations`` names, once, transformed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from amqp_agents import (
    Message,
    MessagePriority,
    MessageQueue,
    MessageRouter,
    MessageType,
    NoRouteError,
    wire,
)
from amqp_agents.config import build_router, load_config
from amqp_agents.routing import compile_rule
from amqp_agents.senders import connection_user

MakeRoutingQueue = Callable[[MessageRouter], Awaitable[MessageQueue]]

ROUTES_YAML = """
broker:
  url: ${TEST_AMQP_URL}
  namespace: ${TEST_NAMESPACE}
# The agent_* senders are known: a sender prefix names only agents the file knows.
external_agents: [researcher, writer, coordinator, auditor, archive,
                  agent_1, agent_2, agent_3, agent_7, agent_x]
routes:
  - pattern: "type:task"
    destinations: [researcher]
  - pattern: "priority:4"
    destinations: [coordinator, auditor]
  - pattern: "sender:bob"
    destinations: [writer]
    transform: {hooks}:stamp_from_bob
  - pattern: "sender:agent_*"
    destinations: [auditor]
    filter: {hooks}:is_final
    transform: {hooks}:redact
  - pattern: "type:result"
    destinations: [coordinator, writer]
    transform: {hooks}:note_reader
  - pattern: "*"
    destinations: [archive]
    filter: {hooks}:is_worth_keeping
"""
DESTINATIONS = ["researcher", "writer", "coordinator", "auditor", "archive"]


# The hooks the YAML names (as "<this module>:<function>").


def stamp_from_bob(message: Message) -> Message:
    """Changes its argument in place: the router must hand it a private copy."""
    message.metadata["stamp"] = "bob"
    return message


def is_final(message: Message) -> bool:
    return not message.metadata.get("draft")


def redact(message: Message) -> Message:
    return message.model_copy(update={"content": "[redacted]"})


def note_reader(message: Message) -> Message:
    """Sees the destination as recipient, so one route can tailor each copy."""
    return message.model_copy(
        update={"metadata": {**message.metadata, "reader": message.recipient}}
    )


def is_worth_keeping(message: Message) -> bool:
    return bool(message.content != "ephemeral")


@dataclass(frozen=True)
class Case:
    """A routed message to send, and where it must arrive (in route order)."""

    sender: str
    type: MessageType
    priority: int
    content: Any
    expected: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def message(self) -> Message:
        return Message(
            sender=self.sender,
            type=self.type,
            priority=MessagePriority(self.priority),
            content=self.content,
            metadata=self.metadata,
            conversation_id="routing-table",
        )


T, N, S, R = MessageType.TASK, MessageType.NOTIFICATION, MessageType.STATUS, MessageType.RESULT
CASES = [
    Case("alice", T, 2, "type", ["researcher", "archive"]),
    Case("", T, 1, "unknown sender", ["researcher", "archive"]),
    Case("alice", N, 4, "priority", ["coordinator", "auditor", "archive"]),
    Case("bob", N, 2, "exact sender", ["writer", "archive"]),
    Case("bobby", N, 2, "not bob", ["archive"]),
    Case("agent_7", S, 2, "prefix", ["auditor", "archive"]),
    Case("agent", S, 2, "prefix needs the underscore", ["archive"]),
    Case("agent_7", S, 2, "filtered", ["archive"], {"draft": True}),
    Case("bob", R, 4, "five routes", ["coordinator", "auditor", "writer", "archive"]),
    Case("agent_x", T, 4, "ephemeral", ["researcher", "coordinator", "auditor"], {"draft": True}),
    Case("agent_x", S, 3, "secret", ["auditor", "archive"]),
    Case("alice", N, 2, "ephemeral", []),
    Case("agent_1", S, 1, "ephemeral", [], {"draft": True}),
]


@pytest.fixture
async def make_routing_queue(
    amqp_url: str,
    namespace: str,
    request: pytest.FixtureRequest,
    make_queue: Callable[..., Awaitable[MessageQueue]],
    connect_raw: Callable[[str], Awaitable[Any]],
) -> AsyncIterator[MakeRoutingQueue]:
    """Factory of connected MessageQueues with routes; deletes every queue they declared.

    ``make_queue`` is requested for its teardown, which runs after this one and removes
    the namespace's exchanges, dead letters and history.
    """
    made: list[MessageQueue] = []

    async def factory(router: MessageRouter) -> MessageQueue:
        queue = MessageQueue(
            amqp_url,
            namespace=namespace,
            router=router,
            connection_name=f"test {request.node.nodeid}",
        )
        made.append(queue)
        return await queue.connect()

    yield factory
    declared: set[str] = set()
    for queue in made:
        declared |= queue.declared_queues
        await queue.close()
    connection = await connect_raw(amqp_url)
    try:
        channel = await connection.channel()
        for name in sorted(declared):
            await channel.queue_delete(name)
    finally:
        await connection.close()


@pytest.fixture
def router_from_yaml(tmp_path: Path, amqp_url: str, namespace: str) -> MessageRouter:
    path = tmp_path / "agents.yaml"
    path.write_text(ROUTES_YAML.replace("{hooks}", __name__), encoding="utf-8")
    config = load_config(path, env={"TEST_AMQP_URL": amqp_url, "TEST_NAMESPACE": namespace})
    assert config.broker.namespace == namespace
    return build_router(config)


async def test_broker_delivers_exactly_what_the_router_predicts(
    make_routing_queue: MakeRoutingQueue, router_from_yaml: MessageRouter
) -> None:
    router = router_from_yaml
    queue = await make_routing_queue(router)
    sent: list[Message] = []
    for case in CASES:
        message = case.message()
        assert router.get_destinations(message) == case.expected, case.content
        if case.expected:
            await queue.send(message)
            sent.append(message)
        else:
            with pytest.raises(NoRouteError):
                await queue.send(message)

    received: dict[str, dict[str, Message]] = {}
    for dest in DESTINATIONS:
        received[dest] = {m.id: m for m in await queue.receive_all(dest)}
        predicted = {m.id: m for m in sent if dest in router.get_destinations(m)}
        assert sorted(received[dest]) == sorted(predicted), dest
        for message_id, got in received[dest].items():
            assert got == router.accept(predicted[message_id], dest)

    # Spot checks on what was delivered: the transforms ran, and only where they should.
    def delivered(content: str, dest: str) -> Message:
        sent_id = next(m.id for m in sent if m.content == content)
        return received[dest][sent_id]

    assert delivered("five routes", "writer").metadata == {"stamp": "bob", "reader": "writer"}
    assert delivered("five routes", "coordinator").metadata == {"reader": "coordinator"}
    assert delivered("five routes", "archive").metadata == {}
    assert delivered("five routes", "writer").recipient == "writer"
    assert delivered("secret", "auditor").content == "[redacted]"
    assert delivered("secret", "archive").content == "secret"
    assert delivered("ephemeral", "auditor").content == "ephemeral"  # its filter failed
    assert all(m.metadata == {} or m.metadata == {"draft": True} for m in sent)


async def test_unroutable_message_raises_and_reaches_no_inbox(
    make_routing_queue: MakeRoutingQueue, router_from_yaml: MessageRouter
) -> None:
    queue = await make_routing_queue(router_from_yaml)
    with pytest.raises(NoRouteError):
        # Bindings would take it (the archive binds every routed message); routes don't.
        await queue.send(Message(sender="alice", content="ephemeral"))
    for dest in DESTINATIONS:
        assert await queue.receive_all(dest) == []


async def test_explicit_recipient_bypasses_the_routes(
    make_routing_queue: MakeRoutingQueue, router_from_yaml: MessageRouter
) -> None:
    queue = await make_routing_queue(router_from_yaml)
    # Routes would send this to researcher, coordinator, auditor and archive.
    direct = Message(
        sender="bob", recipient="writer", type=MessageType.TASK, priority=MessagePriority.URGENT
    )
    await queue.send(direct)
    assert await queue.receive_all("writer") == [direct]  # untransformed: no stamp
    for dest in DESTINATIONS:
        assert await queue.receive_all(dest) == []


async def test_receive_skips_deliveries_no_route_accepts(
    make_routing_queue: MakeRoutingQueue,
    router_from_yaml: MessageRouter,
    raw_channel: aio_pika.abc.AbstractChannel,
    namespace: str,
) -> None:
    """What a filter refuses never reaches the inbox (the sender runs the filter)."""
    queue = await make_routing_queue(router_from_yaml)
    draft = Message(sender="agent_3", type=MessageType.STATUS, metadata={"draft": True})
    await queue.send(draft)  # the archive's route takes it, the auditor's filter refuses it
    await queue.send(Message(sender="agent_3", content="for the auditor"))
    got = await queue.receive("auditor", timeout=5)
    assert got is not None and got.content == "[redacted]" and got.recipient == "auditor"
    inbox = await raw_channel.declare_queue(wire.inbox_name(namespace, "auditor"), passive=True)
    assert inbox.declaration_result.message_count == 0, "the skipped delivery was acked"


async def test_routed_messages_are_kept_in_history(
    make_routing_queue: MakeRoutingQueue, router_from_yaml: MessageRouter
) -> None:
    queue = await make_routing_queue(router_from_yaml)
    first = Message(sender="agent_2", type=MessageType.STATUS, conversation_id="c-routed")
    second = Message(sender="alice", type=MessageType.TASK, conversation_id="c-routed")
    await queue.send(first)
    await queue.send(second)
    history = await queue.get_conversation("c-routed")
    assert [m.id for m in history] == [first.id, second.id], "once each, in send order"


# -- the pure compile step against the broker's topic matching --------------------------

PROBE_PATTERNS = [
    "*",
    *(f"type:{t.value}" for t in MessageType),
    *(f"priority:{p}" for p in range(1, 5)),
    "sender:bob",
    "sender:writer-2",
    "sender:agent_*",
    "sender:w*",
]
PROBE_SENDERS = ["", "bob", "bobby", "agent_1", "agent", "writer-2", "writer-22", "w", "agent_9"]
KNOWN_SENDERS = ["bob", "bobby", "agent_1", "agent", "writer-2", "writer-22", "w"]
"""agent_9 is unknown: the prefix route must neither deliver nor predict its messages."""


async def test_compiled_binding_keys_match_the_brokers_topic_routing(
    queue: MessageQueue, raw_channel: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    """The binding keys of each pattern deliver exactly its predicate's matches.

    Every combination of type, priority and sender is published once, with no
    recipient, plus messages addressed to an agent, which no route key may catch.
    """
    rules = [compile_rule(p, KNOWN_SENDERS) for p in PROBE_PATTERNS]
    probes = [
        await raw_channel.declare_queue(f"{namespace}.probe.{i}", exclusive=True)
        for i in range(len(rules))
    ]
    try:
        for probe, rule in zip(probes, rules, strict=True):
            for key in rule.binding_keys:
                await probe.bind(wire.exchange_name(namespace), routing_key=key)
        routed = [
            Message(sender=sender, type=kind, priority=priority)
            for kind, priority, sender in itertools.product(
                MessageType, MessagePriority, PROBE_SENDERS
            )
        ]
        await queue.ensure_inbox("bob")
        addressed = [Message(sender=s, recipient="bob", type=MessageType.TASK) for s in ("bob", "")]
        await asyncio.gather(*(queue.send(m) for m in routed + addressed))

        all_routed = {m.id for m in routed}
        for probe, rule in zip(probes, rules, strict=True):
            # Publisher confirms came back, so every copy is already in its queue.
            delivered = await _drain_ids(probe)
            predicted = {m.id for m in routed if rule.matches(m)}
            assert predicted, f"the table must exercise {rule.pattern}"
            assert delivered <= all_routed, rule.pattern
            assert delivered == predicted, rule.pattern
    finally:
        for probe in probes:
            await probe.delete(if_unused=False, if_empty=False)


async def _drain_ids(queue: aio_pika.abc.AbstractQueue) -> set[str]:
    ids: set[str] = set()
    while (incoming := await queue.get(no_ack=True, fail=False)) is not None:
        ids.add(wire.decode(incoming).id)
    return ids


async def test_a_raising_filter_parks_the_message_in_dead_letters(
    make_routing_queue: MakeRoutingQueue,
    raw_channel: aio_pika.abc.AbstractChannel,
    namespace: str,
    amqp_url: str,
) -> None:
    def explode(message: Message) -> bool:
        raise ValueError("filter bug")

    router = MessageRouter()
    router.add_route("type:notification", ["archive"])
    router.add_filter("type:notification", explode)
    queue = await make_routing_queue(router)
    # A filtered route has no binding and the sender runs the filter, so only a binding
    # left from before the route had its filter delivers unfiltered: make one, and
    # publish as a foreign client.
    inbox = await raw_channel.get_queue(wire.inbox_name(namespace, "archive"))
    await inbox.bind(namespace, "notification.*.*.-")
    exchange = await raw_channel.get_exchange(namespace)
    await exchange.publish(
        aio_pika.Message(
            b'"x"',
            content_type="application/json",
            priority=2,
            user_id=connection_user(amqp_url),  # the user it connects as: authentic
        ),
        routing_key="notification.2.alice.-",
    )
    assert await queue.receive("archive", timeout=1) is None
    dead = await raw_channel.get_queue(wire.dead_queue_name(namespace))
    async with asyncio.timeout(5), dead.iterator() as it:
        async for corpse in it:
            await corpse.ack()
            break
    assert corpse.headers[wire.H_DEAD_REASON] == "route filter/transform failed"
    assert corpse.headers[wire.H_DEAD_ERROR_MESSAGE] == "filter bug"
