"""admit(): the one decision on a delivery, for agents and for pull receive alike.

Each case is one delivery a user could meet and the verdict it must get; a wrong
verdict means a message handled that must not be, or one lost or stuck.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage

from amqp_agents import Message, MessageRouter, MessageType, wire
from amqp_agents.admission import Admit, DeadLetter, Gate, RecentIds, Skip, Verdict, admit
from amqp_agents.senders import SenderPolicy

from .test_wire import FakeIncoming

NS = "ns"


@dataclass
class Delivery(FakeIncoming):
    """What admit() reads of an AMQP delivery: a decodable one, and who sent it where."""

    reply_to: str | None = None
    user_id: str | None = None


def delivery(
    message: Message, *, deadline: datetime | None = None, reply_to: str | None = None, **over: Any
) -> AbstractIncomingMessage:
    out = wire.encode(message, deadline=deadline, reply_to=reply_to)
    fields: dict[str, Any] = {
        "body": out.body,
        "routing_key": out.routing_key,
        "headers": dict(out.headers),
        "message_id": out.message_id,
        "type": out.type,
        "priority": out.priority,
        "timestamp": out.timestamp,
        "reply_to": out.reply_to,
        "user_id": message.sender,
    }
    return cast(AbstractIncomingMessage, Delivery(**{**fields, **over}))


def gate(
    *, own_user: str = "bob", senders: dict[str, frozenset[str]] | None = None, **over: Any
) -> Gate:
    """Bob's inbox, on a connection as RabbitMQ user ``own_user``."""
    return Gate(NS, "bob", SenderPolicy(own_user, senders or {}), **over)


SVC = {"svc": frozenset({"alice", "carol"})}
"""A ``senders`` map: the user svc serves alice and carol."""


def delivery_headers(message: Message) -> dict[str, Any]:
    return dict(wire.encode(message).headers)


def task(sender: str = "alice", recipient: str = "bob", **over: Any) -> Message:
    return Message(sender=sender, recipient=recipient, type=MessageType.TASK, content="x", **over)


def router() -> MessageRouter:
    routes = MessageRouter(senders=["agent_1", "zed"])
    routes.add_route("sender:agent_*", ["bob"])
    return routes


def raising_router() -> MessageRouter:
    def broken(message: Message) -> bool:
        raise ValueError("filter bug")

    routes = MessageRouter()
    routes.add_route("*", ["bob"])
    routes.add_filter("*", broken)
    return routes


PAST = datetime.now(UTC) - timedelta(seconds=5)
FUTURE = datetime.now(UTC) + timedelta(days=365)  # collected long before it runs: far off
SEEN = task()

CASES: list[tuple[str, AbstractIncomingMessage, Gate, dict[str, Any], type[Verdict], str]] = [
    ("addressed", delivery(task()), gate(), {}, Admit, ""),
    (
        "undecodable body",
        delivery(task(), body=b"{"),
        gate(),
        {},
        DeadLetter,
        "undecodable",
    ),
    (
        "over the size limit",
        delivery(task()),
        gate(max_body_bytes=2),
        {},
        DeadLetter,
        "undecodable",
    ),
    (
        "a CC copy for another agent",
        delivery(task(recipient="carol")),
        gate(),
        {},
        DeadLetter,
        "misaddressed",
    ),
    (
        "a CC header, key addressed to us",
        delivery(task(), headers={**delivery_headers(task()), "CC": ["task.2.alice.carol"]}),
        gate(),
        {},
        DeadLetter,
        "misaddressed",
    ),
    (
        "a CC copy of a routed key",
        delivery(
            task(sender="agent_1", recipient=""),
            headers={**delivery_headers(task(sender="agent_1")), "CC": ["task.2.agent_1.bob"]},
        ),
        gate(router=router()),
        {},
        DeadLetter,
        "misaddressed",
    ),
    (
        "a BCC header",
        delivery(task(), headers={**delivery_headers(task()), "BCC": ["task.2.alice.bob"]}),
        gate(),
        {},
        DeadLetter,
        "misaddressed",
    ),
    ("no user_id", delivery(task(), user_id=None), gate(), {}, DeadLetter, "unauthenticated"),
    (
        "user_id is not the sender",
        delivery(task(), user_id="mallory"),
        gate(),
        {},
        DeadLetter,
        "unauthenticated",
    ),
    (
        "user_id the map lets speak for the sender",
        delivery(task(), user_id="svc"),
        gate(senders=SVC),
        {},
        Admit,
        "",
    ),
    (
        "user_id the map does not let speak for the sender",
        delivery(task(sender="dave"), user_id="svc"),
        gate(senders=SVC),
        {},
        DeadLetter,
        "unauthenticated",
    ),
    ("our own user: a retry copy", delivery(task(), user_id="bob"), gate(), {}, Admit, ""),
    (
        "trust_sender_word, no user_id",
        delivery(task(), user_id=None),
        Gate(NS, "bob", SenderPolicy("bob", trust_sender_word=True)),
        {},
        Admit,
        "",
    ),
    (
        "routed, a route of ours takes it",
        delivery(task(sender="agent_1", recipient="")),
        gate(router=router()),
        {},
        Admit,
        "",
    ),
    (
        "routed, no route of ours takes it",
        delivery(task(sender="zed", recipient="")),
        gate(router=router()),
        {},
        Skip,
        "not for bob",
    ),
    (
        "routed, the filter raises",
        delivery(task(recipient="")),
        gate(router=raising_router()),
        {},
        DeadLetter,
        "route filter/transform failed",
    ),
    (
        "expired, for a handler",
        delivery(task(), deadline=PAST),
        gate(),
        {"handling": True},
        DeadLetter,
        "expired",
    ),
    ("expired, pulled", delivery(task(), deadline=PAST), gate(), {}, Admit, ""),
    ("in time", delivery(task(), deadline=FUTURE), gate(), {"handling": True}, Admit, ""),
    (
        "reply_to an inbox",
        delivery(task(), reply_to="ns.inbox.carol"),
        gate(),
        {"handling": True},
        DeadLetter,
        "is not a reply queue",
    ),
    (
        "reply_to a reply queue",
        delivery(task(), reply_to="ns.reply.alice.0f3a"),
        gate(),
        {"handling": True},
        Admit,
        "",
    ),
    (
        "reply_to a reply queue without owner",
        delivery(task(), reply_to="ns.reply.0f3a"),
        gate(),
        {"handling": True},
        Admit,
        "",
    ),
    (
        "reply_to another agent's reply queue",
        delivery(task(), reply_to="ns.reply.carol.0f3a"),
        gate(),
        {"handling": True},
        DeadLetter,
        "reply_to not the sender's",
    ),
    (
        "reply_to a reply queue of an agent the map lets the user speak for",
        delivery(task(), reply_to="ns.reply.carol.0f3a", user_id="svc"),
        gate(senders=SVC),
        {"handling": True},
        Admit,
        "",
    ),
    (
        "a duplicate",
        delivery(SEEN),
        gate(),
        {"handling": True, "seen": {SEEN.id}},
        Skip,
        "duplicate",
    ),
]


@pytest.mark.parametrize(
    ("incoming", "gate", "options", "verdict", "reason"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_admit_decides_each_delivery(
    incoming: AbstractIncomingMessage,
    gate: Gate,
    options: dict[str, Any],
    verdict: type[Verdict],
    reason: str,
) -> None:
    got = admit(incoming, gate, **options)
    assert type(got) is verdict, got
    if not isinstance(got, Admit):
        assert reason in got.reason


def test_a_routed_message_is_admitted_as_its_route_presents_it() -> None:
    routes = router()
    routes.add_transform("sender:agent_*", lambda m: m.model_copy(update={"content": "[x]"}))
    got = admit(delivery(task(sender="agent_1", recipient="")), gate(router=routes))
    assert isinstance(got, Admit)
    assert (got.message.recipient, got.message.content) == ("bob", "[x]")


def test_a_raising_filter_is_dead_lettered_with_its_error() -> None:
    got = admit(delivery(task(recipient="")), gate(router=raising_router()))
    assert isinstance(got, DeadLetter) and isinstance(got.error, ValueError)


@pytest.mark.parametrize(("size", "kept"), [(0, []), (2, ["b", "c"])])
def test_the_dedup_window_keeps_the_latest_ids(size: int, kept: list[str]) -> None:
    recent = RecentIds(size)
    for message_id in "abc":
        recent.add(message_id)
    assert [i for i in "abc" if i in recent] == kept
