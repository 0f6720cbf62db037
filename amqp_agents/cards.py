"""Agent cards and discovery: what agents a namespace has, what they take, which run.

A card is a recorded message, with no service to ask: an agent publishes its card
(a notification whose content is the card document, sender = the agent) through the
fanout exchange ``{ns}.cards`` into the stream of that name when it starts, and a
record with ``state: "gone"`` when it stops. The newest record of an agent id is its
card. :func:`discover` reads the stream to its end (a marker, as history does) and
asks the broker, by a passive declare of the agent's inbox, how many consumers it
has: a card says what an agent is, the consumer count whether one runs now (an agent
that crashed left no "gone" record, but has no consumer).

A card is believed only when the ``user_id`` that published it may speak for the
agent (senders.py). The document's form is in docs/wire-format.md, "Agent cards".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelNotFoundEntity
from pydantic import BaseModel, Field, ValidationError

from . import wire
from .control_stream import StreamReader
from .errors import AgentsError
from .inbound import Inbound
from .message import Message, MessageType
from .payloads import Validating
from .publish import Publisher, properties

if TYPE_CHECKING:
    from .client import BrokerClient

log = logging.getLogger(__name__)


class Skill(BaseModel):
    """A message type an agent handles, and the JSON schema of the content it takes
    (None: any content)."""

    message_type: str
    input_schema: dict[str, Any] | None = None


class AgentCard(BaseModel):
    """What an agent says of itself.

    Give one to :class:`MessagePassingAgent` (``card=AgentCard(description=...)``);
    its ``id`` and ``skills`` are filled in from the agent when it publishes.

    Attributes:
        id: the agent id.
        description: what it does, for people and for LLMs choosing an agent.
        version: the agent's version.
        skills: the message types it handles, with their payload schemas.
        a2a: an A2A-style agent card document, passed along unchanged.
        state: ``up`` (published at start) or ``gone`` (at stop).
        published_at: when this record was published.
    """

    id: str = ""
    description: str = ""
    version: str = "0"
    skills: list[Skill] = Field(default_factory=list)
    a2a: dict[str, Any] | None = None
    state: Literal["up", "gone"] = "up"
    published_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """An agent found by :func:`discover`: its card, and whether a consumer is live."""

    card: AgentCard
    consumers: int

    @property
    def live(self) -> bool:
        """Whether something consumes the agent's inbox now."""
        return self.consumers > 0


def skills_of(handlers: Mapping[MessageType, Any]) -> list[Skill]:
    """The skills a handler table offers: each type, with its model's schema if typed."""
    return [
        Skill(
            message_type=msg_type.value,
            input_schema=handler.model.model_json_schema()
            if isinstance(handler, Validating)
            else None,
        )
        for msg_type, handler in handlers.items()
    ]


async def publish_card(publisher: Publisher, card: AgentCard) -> None:
    """Append ``card`` to ``{ns}.cards`` (confirmed).

    Raises:
        DeliveryError, BrokerConnectionError: as any confirmed publish.
    """
    record = Message(
        sender=card.id, type=MessageType.NOTIFICATION, content=card.model_dump(mode="json")
    )
    publisher.senders.check_sendable(record)
    out = wire.encode(record, max_body_bytes=publisher.max_body_bytes)
    exchange = wire.card_exchange_name(publisher.namespace)
    props = properties(out, publisher.user_id)
    await publisher.publish(exchange, "", out.body, props, record.id, traced=False)


async def announce(
    client: BrokerClient,
    card: AgentCard,
    agent_id: str,
    handlers: Mapping[MessageType, Any],
    *,
    gone: bool = False,
) -> None:
    """Publish the card of a starting agent (its skills from ``handlers``), or the
    record of one that stopped (``gone``); a refused publish is logged, not raised."""
    if gone and client.failure is not None:
        return  # the broker refuses us for good: the consumer count will say it is gone
    update = {"id": agent_id, "skills": skills_of(handlers), "state": "gone" if gone else "up"}
    try:
        async with asyncio.timeout(client.publish_timeout_s):
            await publish_card(client.publisher, card.model_copy(update=update))
    except (AgentsError, TimeoutError) as exc:  # e.g. no write permission on {ns}.cards
        log.warning("%s: its card was not published: %s", agent_id, exc)


async def discover(
    client: BrokerClient, *, include_gone: bool = False, timeout_s: float = 10.0
) -> list[AgentInfo]:
    """The agents of the namespace with their newest card and consumer count, by id.

    Args:
        include_gone: also list agents whose newest record says they stopped.
        timeout_s: how long reading the cards stream may take.

    Raises:
        TimeoutError: the stream's end was not reached within ``timeout_s``.
        TopologyError, BrokerConnectionError: the stream is missing or unreadable.
    """
    cards: dict[str, AgentCard] = {}

    def on_record(incoming: Inbound) -> None:
        card = _card_of(incoming, client)
        if card is not None:
            cards[card.id] = card

    reader = StreamReader(
        await client.channel(),
        client.publisher,
        wire.card_stream_name(client.namespace),
        wire.card_exchange_name(client.namespace),
        on_record,
    )
    try:
        await reader.start(timeout_s=timeout_s)
    finally:
        await reader.close()
    found = [c for c in cards.values() if include_gone or c.state == "up"]
    return [AgentInfo(card, await _consumers(client, card.id)) for card in sorted(found, key=_id)]


def _id(card: AgentCard) -> str:
    return card.id


def _card_of(incoming: Inbound, client: BrokerClient) -> AgentCard | None:
    """The card a record holds, or None (undecodable, or from a user who may not
    speak for the agent it names)."""
    try:
        card = AgentCard.model_validate(json.loads(incoming.body))
    except (ValueError, ValidationError) as exc:
        log.debug("cards: record %s skipped: %s", incoming.message_id, exc)
        return None
    if refused := client.senders.refusal(incoming.user_id, card.id):
        log.warning("cards: card of %r ignored: %s", card.id, refused)
        return None
    return card


async def _consumers(client: BrokerClient, agent_id: str) -> int:
    """How many consumers the agent's inbox (all its lanes) has; 0 when it has none."""
    total = 0
    for name in client.inbox_queue_names(agent_id):
        channel = await client.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            total += queue.declaration_result.consumer_count or 0
        except ChannelNotFoundEntity:
            return 0
        finally:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await channel.close()
    return total
