"""Helpers of the history tests: writing entries straight into a history stream.

Publishing wire-encoded messages to the stream itself (through the default exchange)
fills it much faster than sending to inboxes, and gives full control of each entry's
timestamp, conversation and agents. The entries are what ``MessageQueue.send`` would
have put there: the same encoding, the same properties.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aio_pika.abc import AbstractChannel

from amqp_agents import wire
from amqp_agents.message import Message
from amqp_agents.publish import properties

WINDOW = 500
"""Publishes awaiting their confirm at once."""


async def append_to_history(
    channel: AbstractChannel, namespace: str, messages: Iterable[Message]
) -> None:
    """Append ``messages`` to ``{namespace}.history`` in order, each one confirmed.

    The properties are the library's own (:func:`amqp_agents.publish.properties`), so an
    entry is exactly what ``send`` would have put there.
    """
    name = wire.history_name(namespace)
    underlay = await channel.get_underlay_channel()
    pending: list[asyncio.Future[object]] = []
    for message in messages:
        out = wire.encode(message)
        confirm = underlay.basic_publish(
            out.body, exchange="", routing_key=name, properties=properties(out)
        )
        pending.append(asyncio.ensure_future(confirm))
        if len(pending) >= WINDOW:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
