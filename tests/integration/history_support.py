"""Helpers of the history tests: writing entries straight into a history stream.

Publishing wire-encoded messages to the stream itself (through the default exchange)
fills it much faster than sending to inboxes, and gives full control of each entry's
timestamp, conversation and agents. The entries are what ``MessageQueue.send`` would
have put there: the same encoding, the same properties.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aio_pika import DeliveryMode
from aio_pika import Message as AmqpMessage
from aio_pika.abc import AbstractChannel

from amqp_agents import wire
from amqp_agents.message import Message

WINDOW = 500
"""Publishes awaiting their confirm at once."""


async def append_to_history(
    channel: AbstractChannel, namespace: str, messages: Iterable[Message]
) -> None:
    """Append ``messages`` to ``{namespace}.history`` in order, each one confirmed."""
    name = wire.history_name(namespace)
    pending: list[asyncio.Future[object] | asyncio.Task[object]] = []
    for message in messages:
        out = wire.encode(message)
        amqp = AmqpMessage(
            out.body,
            headers=out.headers,
            content_type=wire.CONTENT_TYPE,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=out.priority,
            correlation_id=out.correlation_id,
            message_id=out.message_id,
            timestamp=out.timestamp,
            type=out.type,
        )
        pending.append(
            asyncio.ensure_future(channel.default_exchange.publish(amqp, routing_key=name))
        )
        if len(pending) >= WINDOW:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
