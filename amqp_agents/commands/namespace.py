"""Finding what of a namespace exists on the broker, and deleting it (``topology delete``).

AMQP cannot list queues, so the names come from somewhere: a configuration's layout
(everything it needs), or, for a bare namespace, its fixed names plus the queues the
last ``topology apply`` recorded binding. Each name is checked with a passive declare,
which also gives a queue's message and consumer counts to show before deleting.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import ChannelClosed

from amqp_agents.layout import Layout, base_layout, record_layout
from amqp_agents.topology import inspect_layout


@dataclass(frozen=True, slots=True)
class FoundQueue:
    name: str
    messages: int
    consumers: int


@dataclass(frozen=True, slots=True)
class Found:
    """The exchanges and queues of a namespace that exist."""

    exchanges: list[str]
    queues: list[FoundQueue]


async def find_namespace(
    connection: AbstractConnection, namespace: str, layout: Layout | None = None
) -> Found:
    """What exists of ``layout`` (None: of the bare namespace, as the module says)."""
    # The names every namespace has, whatever its agents: the base and the apply record.
    names = layout or base_layout(namespace) + record_layout(namespace)
    exchanges = [e.name for e in names.exchanges]
    queues = [q.name for q in names.queues]
    if layout is None:
        observed = await inspect_layout(connection, names, check_arguments=False)
        for binding in sorted(observed.recorded or ()):
            exchanges.append(binding.exchange)
            queues.append(binding.queue)
    channel = await connection.channel()
    found = Found([], [])
    try:
        for name in dict.fromkeys(exchanges):
            channel, exists = await _exchange_exists(connection, channel, name)
            if exists:
                found.exchanges.append(name)
        for name in dict.fromkeys(queues):
            channel, queue = await _queue_counts(connection, channel, name)
            if queue is not None:
                found.queues.append(queue)
    finally:
        with contextlib.suppress(ChannelClosed):
            await channel.close()
    return found


async def _exchange_exists(
    connection: AbstractConnection, channel: AbstractChannel, name: str
) -> tuple[AbstractChannel, bool]:
    """Whether ``name`` exists; a failed passive declare closes the channel: a new one."""
    try:
        await channel.declare_exchange(name, passive=True)
        return channel, True
    except ChannelClosed:
        return await connection.channel(), False


async def _queue_counts(
    connection: AbstractConnection, channel: AbstractChannel, name: str
) -> tuple[AbstractChannel, FoundQueue | None]:
    """The queue ``name`` with its counts, or None (and a new channel) if it is missing."""
    try:
        result = (await channel.declare_queue(name, passive=True)).declaration_result
    except ChannelClosed:
        return await connection.channel(), None
    return channel, FoundQueue(name, result.message_count or 0, result.consumer_count or 0)


async def remove(connection: AbstractConnection, found: Found) -> None:
    """Delete the queues (messages included), then the exchanges."""
    channel = await connection.channel()
    try:
        for queue in found.queues:
            await channel.queue_delete(queue.name)
        for name in found.exchanges:
            await channel.exchange_delete(name)
    finally:
        await channel.close()
