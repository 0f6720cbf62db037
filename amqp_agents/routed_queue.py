"""RoutingMessageQueue: a MessageQueue whose recipient-less messages follow routes.

The broker does the fan-out: on connect, every route's destination inbox (and the
history stream) is bound with the route's key, so :meth:`RoutingMessageQueue.send`
publishes a routed message once and each inbox gets one copy, however many routes
match. Bindings are wider than some routes (a sender prefix, a filter), so every
delivery of a routed message passes :meth:`MessageRouter.accept` before an agent sees
it. The routes themselves live in the pure :mod:`amqp_agents.routing`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from . import wire
from .errors import NoRouteError
from .message import Message
from .queue import MessageQueue
from .routing import MessageRouter

log = logging.getLogger(__name__)


class RoutingMessageQueue(MessageQueue):
    """A MessageQueue that delivers recipient-less messages by ``router``'s routes.

    Args:
        router: the routes. Routes added after :meth:`connect` need
            :meth:`bind_routes` to reach the broker.
        url: broker URL, as for :class:`MessageQueue`.
        namespace: name prefix, as for :class:`MessageQueue`.
        **options: any other :class:`MessageQueue` keyword argument.

    Every process that consumes a routed inbox should use the same routes: the
    consumer's router decides what its agents see.
    """

    def __init__(
        self,
        router: MessageRouter,
        url: str | None = None,
        *,
        namespace: str = "agents",
        **options: Any,
    ) -> None:
        super().__init__(url, namespace=namespace, **options)
        self.router = router

    def __repr__(self) -> str:
        return f"Routing{super().__repr__()}"

    async def connect(self) -> RoutingMessageQueue:
        """Connect, declare the base topology, and bind every route (see :meth:`bind_routes`).

        Raises:
            BrokerConnectionError, TopologyError: as :meth:`MessageQueue.connect`.
        """
        if self._connection is not None:
            return self
        await super().connect()
        try:
            await self.bind_routes()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aenter__(self) -> RoutingMessageQueue:
        return await self.connect()

    async def bind_routes(self) -> None:
        """Bind each route's destination inboxes and the history stream with its key.

        Idempotent. Declares the destinations' inboxes, so a routed message is kept
        even before its agent first starts. History gets the route keys too: routed
        traffic is in history, and a message that reaches no inbox reaches no queue.
        In passive mode nothing is bound: the bindings must already exist.
        """
        bindings = self.router.bindings()
        topology = await self.topology()
        async with self._topology_lock:
            for destination in self.router.destinations:  # filtered routes' too
                await topology.declare_inbox(destination)
            for key, destination in bindings:
                await topology.bind_inbox(destination, key)
            for key in dict.fromkeys(key for key, _ in bindings):
                await topology.bind_history(key)
        log.debug("%r: bound %d route bindings", self, len(bindings))

    async def restore_inbox(self, agent_id: str) -> None:
        """Declare the agent's inbox again, with its own and every route's bindings."""
        await super().restore_inbox(agent_id)
        await self.bind_routes()

    async def send(
        self,
        message: Message,
        *,
        reply_to: str | None = None,
        deadline: datetime | None = None,
        extra_headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish ``message``: to its recipient if it has one, else along the routes.

        A recipient-less message is checked against the routes (filters included)
        before publishing: no route taking it is an error here, not a message that
        nobody reads. It is published once; the bindings copy it into the inboxes of
        the unfiltered routes, and a ``BCC`` into those of the filtered routes that
        keep it (the broker cannot run a filter).

        Raises:
            NoRouteError: no recipient, and no route takes the message.
            The errors of :meth:`MessageQueue.send`.
        """
        if not message.recipient:
            if not self.router.get_destinations(message):
                key = wire.routing_key(message)
                raise NoRouteError(f"no route takes message {message.id} ({key})")
            if filtered := self.router.filtered_destinations(message):
                # Each copy is delivered under the routed key (recipient word "-").
                bcc = [
                    wire.routing_key(message.model_copy(update={"recipient": dest}))
                    for dest in filtered
                ]
                extra_headers = {**(extra_headers or {}), "BCC": bcc}
        await super().send(
            message, reply_to=reply_to, deadline=deadline, extra_headers=extra_headers
        )

    def tap_binding_keys(self, agent_id: str) -> list[str]:
        """The inbox's own key and the keys of the routes that name ``agent_id``."""
        routed = (key for key, destination in self.router.bindings() if destination == agent_id)
        return [*super().tap_binding_keys(agent_id), *dict.fromkeys(routed)]

    def accept(self, message: Message, agent_id: str) -> Message | None:
        """A routed message as ``agent_id``'s routes decide; any other one unchanged."""
        if message.recipient:
            return message
        return self.router.accept(message, agent_id)
