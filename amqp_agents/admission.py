"""Admission: the one decision on what happens to a delivery taken from an inbox.

:func:`admit` is the consume path's gate, for an agent's consumer and for the client's
own ``receive``/``receive_all``/``subscribe`` alike. In order::

    decode ── undecodable ───────────────────────────> DeadLetter
    addressed to this agent? (CC/BCC copies) ── no ──> DeadLetter ("misaddressed")
    sender authenticated? (authenticate_senders) ─ no > DeadLetter ("unauthenticated")
    routed: does a route of this agent take it? ─ no ─> Skip (ack, unhandled)
    ── only for a handler (``handling=True``) ──
    past its deadline? ── yes ───────────────────────> DeadLetter ("expired")
    reply_to outside the namespace's reply queues? ──> DeadLetter (answering would
                                                       write there with our rights)
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

from aio_pika.abc import AbstractIncomingMessage

from . import wire
from .errors import InvalidMessageError
from .message import Message
from .routing import MessageRouter

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
        user_id: the authenticated agent of this connection (``authenticate_senders``),
            else None: then ``user_id`` is not checked.
        router: the routes that decide what a routed message becomes for this agent.
    """

    namespace: str
    agent_id: str
    max_body_bytes: int | None = None
    user_id: str | None = None
    router: MessageRouter | None = None


def admit(
    incoming: AbstractIncomingMessage,
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
        deadline = wire.deadline_of(incoming.headers)
        if deadline is not None and deadline <= datetime.now(UTC):
            return DeadLetter("expired")
        if incoming.reply_to and not wire.may_reply_to(gate.namespace, incoming.reply_to):
            return DeadLetter(f"reply_to {incoming.reply_to!r} is not a reply queue")
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


def _refusal(incoming: AbstractIncomingMessage, message: Message, gate: Gate) -> str | None:
    """Why the inbox's owner must not act on a decoded delivery, or None.

    Misaddressed: a copy another publisher's CC/BCC put into this inbox (see
    :func:`wire.addressed_to`). Unauthenticated (``authenticate_senders``): the
    ``user_id`` RabbitMQ validated is not the sender's; a copy we published ourselves
    (a retry) carries our own.
    """
    key = incoming.routing_key
    if not wire.addressed_to(key, message.recipient, gate.namespace, gate.agent_id):
        return (
            f"misaddressed: routing key {incoming.routing_key!r}, recipient"
            f" {message.recipient!r}: not for {gate.agent_id!r}"
        )
    if gate.user_id is not None and incoming.user_id not in (message.sender, gate.user_id):
        return (
            f"unauthenticated sender: user_id {incoming.user_id!r} is not the sender"
            f" {message.sender!r}"
        )
    return None
