"""Admission: the one decision on what happens to a delivery taken from an inbox.

:func:`admit` is the consume path's gate, for an agent's consumer and for the client's
own ``receive``/``receive_all``/``subscribe`` alike. In order::

    decode ── undecodable ───────────────────────────> DeadLetter
    addressed to this agent, no CC/BCC header? ─ no ─> DeadLetter ("misaddressed")
    may its user_id speak for its sender? ── no ─────> DeadLetter ("unauthenticated
                                                       sender"; see senders.py)
    routed: does a route of this agent take it? ─ no ─> Skip (ack, unhandled)
    ── only for a handler (``handling=True``) ──
    past its deadline? ── yes ───────────────────────> DeadLetter ("expired")
    reply_to outside the namespace's reply queues? ──> DeadLetter (answering would
                                                       write there with our rights)
    reply_to owned by an agent the user_id may not ──> DeadLetter ("reply_to not the
    speak for?                                         sender's")
    a duplicate (the agent's dedup window)? ── yes ──> Skip
    ──> Admit(message)

It decides only; the caller carries the verdict out (dead-letter, ack, or handle).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime

from . import wire
from .errors import InvalidMessageError
from .inbound import Inbound
from .message import Message
from .routing import MessageRouter
from .senders import SenderPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admit:
    """Hand ``message`` (as this agent's routes present it) over."""

    message: Message


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move the delivery to ``{ns}.dead`` unhandled, with ``reason`` (and ``error``)."""

    reason: str
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Skip:
    """Acknowledge the delivery without handling it: not meant for us, or seen before."""

    reason: str
    duplicate: bool = False


Verdict = Admit | DeadLetter | Skip


class RecentIds:
    """The last ``size`` message ids handled (a dedup window; size 0 keeps none)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, message_id: str) -> None:
        """Remember ``message_id``, forgetting the oldest beyond ``size``."""
        if not self.size:
            return
        self._ids[message_id] = None
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids


@dataclass(frozen=True, slots=True)
class Gate:
    """What admission checks against, for one inbox.

    Attributes:
        namespace: the namespace of the inbox.
        agent_id: the inbox's owner.
        max_body_bytes: larger bodies are refused unparsed, as when sending.
        senders: whom each RabbitMQ user may speak for (the sender check).
        router: the routes that decide what a routed message becomes for this agent.
    """

    namespace: str
    agent_id: str
    senders: SenderPolicy
    max_body_bytes: int | None = None
    router: MessageRouter | None = None


def admit(
    incoming: Inbound,
    gate: Gate,
    *,
    handling: bool = False,
    seen: Container[str] = (),
) -> Verdict:
    """Decide what happens to ``incoming`` (see the module's diagram).

    Args:
        handling: a handler will act on it and answer: check its deadline and its
            reply address too.
        seen: ids already handled (a dedup window); a delivery among them is skipped.
    """
    agent_id = gate.agent_id
    try:
        message = wire.decode(incoming, inbox_owner=agent_id, max_body_bytes=gate.max_body_bytes)
    except InvalidMessageError as exc:
        return DeadLetter(f"undecodable: {exc}")
    except Exception as exc:
        # A decoder bug must not leave a foreign message unacknowledged for ever.
        log.exception("decoding message %s failed unexpectedly", incoming.message_id)
        return DeadLetter(f"undecodable: {type(exc).__name__}")
    if refused := _refusal(incoming, message, gate):
        return DeadLetter(refused)
    if gate.router is not None:
        try:
            routed = route_view(gate.router, message, agent_id)
        except Exception as exc:
            # A route's filter or transform raised: park the message with the reason
            # rather than leave it unacknowledged (stuck) or drop it.
            return DeadLetter("route filter/transform failed", exc)
        if routed is None:
            return Skip(f"message {message.id} is not for {agent_id}")
        message = routed
    if handling:
        deadline = wire.held_deadline(incoming.headers, message.timestamp)
        if deadline is not None and deadline <= datetime.now(UTC):
            return DeadLetter("expired")
        if incoming.reply_to and (refused := _reply_to_refusal(incoming, gate)):
            return DeadLetter(refused)
        if message.id in seen:
            return Skip(f"duplicate of {message.id}", duplicate=True)
    return Admit(message)


def route_view(router: MessageRouter, message: Message, agent_id: str) -> Message | None:
    """What ``agent_id`` sees of a message: an addressed one unchanged, a routed one as
    its routes decide (None: not meant for it; see :meth:`MessageRouter.accept`).

    Bindings deliver what the patterns match, and a filtered route's copies come by
    ``BCC``; this applies the transforms, and drops what a filter refuses or what
    bindings of routes since removed still deliver.
    """
    if message.recipient:
        return message
    return router.accept(message, agent_id)


def _refusal(incoming: Inbound, message: Message, gate: Gate) -> str | None:
    """Why the inbox's owner must not act on a decoded delivery, or None.

    Misaddressed: a copy another publisher's CC/BCC put into this inbox. The routing
    key names the recipient (see :func:`wire.addressed_to`), but a key of ``-`` (a
    routed message) cannot tell a copy from a routed original, so any ``CC`` or
    ``BCC`` header marks one: the library never publishes them on the traffic
    exchange, and RabbitMQ 3.x checks no permission on their keys. Unauthenticated:
    the ``user_id`` RabbitMQ validated may not speak for the sender (senders.py).
    """
    key = incoming.routing_key
    if copied := [name for name in ("CC", "BCC") if name in (incoming.headers or {})]:
        return (
            f"misaddressed: routing key {key!r} with a {'/'.join(copied)} header, a copy"
            f" its publisher fanned out: not for {gate.agent_id!r}"
        )
    if not wire.addressed_to(key, message.recipient, gate.namespace, gate.agent_id):
        return (
            f"misaddressed: routing key {key!r}, recipient {message.recipient!r}:"
            f" not for {gate.agent_id!r}"
        )
    return gate.senders.refusal(incoming.user_id, message.sender)


def _reply_to_refusal(incoming: Inbound, gate: Gate) -> str | None:
    """Why the agent must not answer into the delivery's ``reply_to``, or None.

    Answering writes with the agent's rights: only into a reply queue, and only one
    whose owner (the agent id in its name) the request's user may speak for, so that
    no one makes the agent pour answers into someone else's reply queue.
    """
    reply_to = incoming.reply_to or ""
    if not wire.may_reply_to(gate.namespace, reply_to):
        return f"reply_to {reply_to!r} is not a reply queue"
    owner = wire.reply_queue_owner(gate.namespace, reply_to)
    if owner is not None and not gate.senders.may_speak_for(incoming.user_id, owner):
        return (
            f"reply_to not the sender's: {reply_to!r} belongs to {owner!r}, and user_id"
            f" {incoming.user_id!r} may not speak for it"
        )
    return None
