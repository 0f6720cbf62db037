"""Declaring what a namespace needs on the broker: exchanges, inboxes, dead letters, history.

Every declaration goes through here so that every process declares the same names
with the same arguments (a mismatch fails with PRECONDITION_FAILED). In passive mode
nothing is created: we only check that it exists, for users without configure
permission.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, ExchangeType
from aio_pika.exceptions import ChannelClosed, ChannelNotFoundEntity, ChannelPreconditionFailed

from . import wire
from .errors import TopologyError

log = logging.getLogger(__name__)


class Topology:
    """Declares and remembers one namespace's exchanges and queues on a channel.

    Args:
        channel: a channel used only for declarations (a failed declaration closes it).
        namespace: the name prefix.
        passive: check that things exist instead of creating them.
        inbox_max_length: length limit of every inbox declared here (None: unlimited).
        history_max_age: retention of the history stream by age ("7D", "12h").
        history_max_bytes: retention of the history stream by size.
        declared: a set that records the name of every queue declared (for teardown).
    """

    def __init__(
        self,
        channel: AbstractChannel,
        namespace: str,
        *,
        passive: bool = False,
        inbox_max_length: int | None = None,
        history_max_age: str = "7D",
        history_max_bytes: int = 1_000_000_000,
        declared: set[str] | None = None,
    ) -> None:
        self.channel = channel
        self.declared = declared if declared is not None else set()
        self.ns = namespace
        self.passive = passive
        self.inbox_max_length = inbox_max_length
        self.history_args = wire.history_arguments(
            max_age=history_max_age, max_bytes=history_max_bytes
        )
        self.exchange: AbstractExchange | None = None
        self.history: AbstractQueue | None = None
        self._inboxes: dict[str, AbstractQueue] = {}
        self._retry_queues: set[str] = set()

    async def declare_base(self) -> AbstractExchange:
        """Declare the topic exchange, the dead-letter path and the history stream."""
        ns = self.ns
        self.exchange = await self._exchange(wire.exchange_name(ns), ExchangeType.TOPIC)
        dlx = await self._exchange(wire.dead_letter_exchange_name(ns), ExchangeType.FANOUT)
        dead = await self._queue(wire.dead_queue_name(ns), {"x-queue-type": "classic"})
        self.history = await self._queue(wire.history_name(ns), self.history_args)
        if not self.passive:
            await dead.bind(dlx, routing_key="")
        return self.exchange

    async def declare_inbox(self, agent_id: str) -> AbstractQueue:
        """Declare ``{ns}.inbox.{agent_id}`` and its bindings; idempotent and cached.

        The history stream gets the same binding as the inbox, so a message to an
        agent without inbox reaches no queue at all and comes back to the sender as
        an unknown recipient, instead of silently landing only in history.
        """
        queue = self._inboxes.get(agent_id)
        if queue is not None:
            return queue
        wire.validate_namespace(self.ns)
        if self.exchange is None or self.history is None:
            await self.declare_base()
        assert self.exchange is not None and self.history is not None
        args = wire.inbox_arguments(self.ns, max_length=self.inbox_max_length)
        queue = await self._queue(wire.inbox_name(self.ns, agent_id), args)
        key = wire.inbox_binding_key(agent_id)
        if not self.passive:
            await queue.bind(self.exchange, routing_key=key)
            await self.history.bind(self.exchange, routing_key=key)
        self._inboxes[agent_id] = queue
        return queue

    async def declare_retry_queue(self, agent_id: str, delay_s: float) -> str:
        """Declare the queue that holds ``agent_id``'s failed messages for ``delay_s``.

        Its messages expire after the delay and are dead-lettered straight back into the
        agent's inbox (through the default exchange, so history does not record the
        retry twice). One queue per delay keeps expiry in order: per-message TTLs in one
        queue would expire only at its head.
        """
        name = wire.retry_queue_name(self.ns, agent_id, delay_s)
        if name in self._retry_queues:
            return name
        await self._queue(name, wire.retry_queue_arguments(self.ns, agent_id, delay_s))
        self._retry_queues.add(name)
        return name

    async def bind_history(self, routing_key: str) -> None:
        """Make the history stream keep messages published with ``routing_key``."""
        if self.exchange is None or self.history is None:
            await self.declare_base()
        assert self.exchange is not None and self.history is not None
        if not self.passive:
            await self.history.bind(self.exchange, routing_key=routing_key)

    async def bind_inbox(self, agent_id: str, routing_key: str) -> None:
        """Declare ``agent_id``'s inbox and also bind it with ``routing_key`` (a route's).

        Route keys end in ``-`` (recipient-less messages), so they never overlap the
        inbox's own ``*.*.*.{agent_id}`` binding.
        """
        queue = await self.declare_inbox(agent_id)
        assert self.exchange is not None
        if not self.passive:
            await queue.bind(self.exchange, routing_key=routing_key)

    async def _exchange(self, name: str, kind: ExchangeType) -> AbstractExchange:
        try:
            return await self.channel.declare_exchange(
                name, kind, durable=True, passive=self.passive
            )
        except (ChannelNotFoundEntity, ChannelPreconditionFailed, ChannelClosed) as exc:
            raise self._error("exchange", name, exc) from exc

    async def _queue(self, name: str, arguments: dict[str, Any]) -> AbstractQueue:
        self.declared.add(name)
        try:
            return await self.channel.declare_queue(
                name, durable=True, passive=self.passive, arguments=arguments
            )
        except (ChannelNotFoundEntity, ChannelPreconditionFailed, ChannelClosed) as exc:
            raise self._error("queue", name, exc) from exc

    def _error(self, kind: str, name: str, exc: Exception) -> TopologyError:
        if isinstance(exc, ChannelNotFoundEntity) or self.passive:
            hint = "run `amqp-agents topology apply` with a user that may configure it"
            return TopologyError(f"{kind} {name!r} does not exist ({hint}): {exc}")
        return TopologyError(
            f"{kind} {name!r} exists with other arguments than {self.ns!r} needs "
            f"(see `amqp-agents topology plan`): {exc}"
        )


async def delete_namespace(
    channel: AbstractChannel, namespace: str, queues: Sequence[str] = ()
) -> None:
    """Delete a namespace's exchanges, its fixed queues and ``queues``; for teardown."""
    fixed = [wire.dead_queue_name(namespace), wire.history_name(namespace)]
    for name in sorted(set(queues) | set(fixed)):
        await channel.queue_delete(name)
    for name in (wire.exchange_name(namespace), wire.dead_letter_exchange_name(namespace)):
        await channel.exchange_delete(name)
