"""Declaring at run time: the namespace's topology on one channel, plus spare channels
when many agents declare their inboxes at once.

:class:`Declarations` owns the channels; :class:`~amqp_agents.topology.Topology` says
what each declaration is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelNotFoundEntity

from . import wire
from .errors import TopologyError
from .routing import MessageRouter
from .topology import Topology

SPARE_DECLARERS = 7
"""Extra channels declaring inboxes while the topology channel is busy (see ensure_inbox)."""


class Declarations:
    """One namespace's declarations, made on channels of their own.

    Args:
        open_channel: opens a channel of the connection (waiting while it reconnects).
        namespace: the namespace.
        timeout_s: how long the base declarations are retried after a broker restart.
        declared: records the name of every queue declared (kept across reconnects).
        **options: :class:`Topology` options (passive, inbox limits, history retention).
    """

    def __init__(
        self,
        open_channel: Callable[[], Awaitable[AbstractChannel]],
        namespace: str,
        *,
        timeout_s: float,
        declared: set[str],
        **options: Any,
    ) -> None:
        self._open_channel = open_channel
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.declared = declared
        self.passive: bool = options.get("passive", False)
        self._options = options
        self._topology: Topology | None = None
        self._lock = asyncio.Lock()
        self._idle_declarers: asyncio.Queue[Topology] = asyncio.Queue()
        self._spare_declarers_made = 0
        self._declaring = False

    def reset(self) -> None:
        """Forget the topology channel (the connection closed)."""
        self._topology = None

    def _new(self, channel: AbstractChannel) -> Topology:
        return Topology(channel, self.namespace, declared=self.declared, **self._options)

    async def topology(self) -> Topology:
        """The namespace's declarations, made on a channel of their own.

        Right after a broker restart its durable queues take a moment to come back
        (RabbitMQ: "home node ... is down or inaccessible"); meanwhile the base
        declarations are retried, for up to ``timeout_s``.
        """
        async with self._lock:
            if self._topology is None or self._topology.channel.is_closed:
                self._topology = await self._declare_base()
            return self._topology

    async def _declare_base(self) -> Topology:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.timeout_s
        while True:
            channel = await self._open_channel()
            topology = self._new(channel)
            try:
                await topology.declare_base()
                return topology
            except TopologyError as exc:
                # The failed declaration closed the channel; a robust one left open-ended
                # would be reopened, and its declarations replayed, at every reconnect.
                with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                    await channel.close()
                if "down or inaccessible" not in str(exc) or loop.time() > give_up:
                    raise
            await asyncio.sleep(0.1)  # polling: nothing says when the queues are back

    async def ensure_inbox(self, agent_id: str) -> AbstractQueue:
        """Declare the agent's inbox if it does not exist yet (idempotent)."""
        topology = await self.topology()
        if not self._declaring:
            self._declaring = True
            try:
                async with self._lock:
                    return await topology.declare_inbox(agent_id)
            finally:
                self._declaring = False
        # Another declaration holds the topology channel (agents starting together): a
        # broker takes milliseconds per inbox (a durable priority queue and two
        # bindings), one at a time per channel, so spread them over spare channels.
        spare = await self._take_spare_declarer()
        try:
            return await spare.declare_inbox(agent_id)
        finally:
            self._idle_declarers.put_nowait(spare)  # closed ones are dropped when taken

    async def _take_spare_declarer(self) -> Topology:
        """An idle spare declaration channel, a new one, or the next one given back."""
        while True:
            if self._idle_declarers.empty() and self._spare_declarers_made < SPARE_DECLARERS:
                self._spare_declarers_made += 1
                try:
                    return self._new(await self._open_channel())
                except BaseException:
                    self._spare_declarers_made -= 1
                    raise
            spare = await self._idle_declarers.get()
            if not spare.channel.is_closed:  # a failed declaration closes its channel
                return spare
            self._spare_declarers_made -= 1

    async def restore_inbox(self, agent_id: str) -> None:
        """Declare the agent's inbox and its bindings again (passive: check it exists).

        Raises:
            TopologyError: passive mode and the inbox is gone, or it was re-created
                elsewhere with other arguments.
        """
        if self.passive:
            # A robust channel answers a passive declare of a queue it has seen from
            # memory; only a fresh channel really asks the broker.
            name = wire.inbox_name(self.namespace, agent_id)
            channel = await self._open_channel()
            try:
                await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity as exc:
                raise TopologyError(
                    f"inbox {name!r} does not exist and this passive connection may not "
                    f"create it (run `amqp-agents topology apply`): {exc}"
                ) from None
            finally:
                with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                    await channel.close()
            return
        topology = await self.topology()
        async with self._lock:
            topology.forget_inbox(agent_id)
            await topology.declare_inbox(agent_id)

    async def bind_routes(self, router: MessageRouter) -> int:
        """Bind every route's key to its destination's inbox (and history); idempotent.

        Declares every destination's inbox, a filtered route's too: it has no binding
        (the sender addresses its copies by ``BCC``), but its inbox must exist.

        Returns:
            how many (key, destination) bindings the routes need.
        """
        bindings = router.bindings()
        topology = await self.topology()
        async with self._lock:
            for destination in router.destinations:  # a filtered route's have no binding
                await topology.declare_inbox(destination)
            for key, destination in bindings:
                await topology.bind_route(key, destination)
        return len(bindings)
