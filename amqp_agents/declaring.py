"""Declaring at run time: the namespace's topology on one channel, plus spare channels
when many agents declare their inboxes at once.

:class:`Declarations` owns the channels; :class:`~amqp_agents.topology.Topology` says
what each declaration is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aio_pika.abc import AbstractChannel, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from . import wire
from .errors import QueueUnavailableError, TopologyError, map_exceptions
from .layout import DEFAULT_INBOX, DEFAULT_OPTIONS, InboxOptions, NamespaceOptions
from .routing import MessageRouter
from .topology import Topology, declaration_errors

log = logging.getLogger(__name__)

T = TypeVar("T")

SPARE_DECLARERS = 7
"""Extra channels declaring inboxes while the topology channel is busy (see ensure_inbox)."""


class Declarations:
    """One namespace's declarations, made on channels of their own.

    Args:
        open_channel: opens a channel of the connection (waiting while it reconnects).
        namespace: the namespace.
        timeout_s: how long the base declarations are retried while a queue of the base
            is unavailable (a broker restart, a node down, a leader election).
        declared: records the name of every queue declared (kept across reconnects).
        passive, options, inbox, inboxes: as :class:`Topology`'s.
    """

    def __init__(
        self,
        open_channel: Callable[[], Awaitable[AbstractChannel]],
        namespace: str,
        *,
        timeout_s: float,
        declared: set[str],
        passive: bool = False,
        options: NamespaceOptions = DEFAULT_OPTIONS,
        inbox: InboxOptions = DEFAULT_INBOX,
        inboxes: Mapping[str, InboxOptions] | None = None,
    ) -> None:
        self._open_channel = open_channel
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.declared = declared
        self.passive = passive
        self.queue_type = options.queue_type
        self._options: dict[str, Any] = {
            "passive": passive,
            "options": options,
            "inbox": inbox,
            "inboxes": inboxes,
        }
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
        (RabbitMQ: "home node ... is down or inaccessible"), and a quorum queue has no
        leader while one is elected; meanwhile (:class:`QueueUnavailableError`) the
        base declarations are retried with backoff, logged once, for up to ``timeout_s``.
        """
        async with self._lock:
            if self._topology is None or self._topology.channel.is_closed:
                self._topology = await self._declare_base()
            return self._topology

    async def _declare_base(self) -> Topology:
        return await retry_unavailable(self._try_declare_base, self.timeout_s, "the namespace")

    async def _try_declare_base(self) -> Topology:
        channel = await self._open_channel()
        topology = self._new(channel)
        try:
            await topology.declare_base()
        except (TopologyError, QueueUnavailableError):
            # The failed declaration closed the channel; a robust one left open-ended
            # would be reopened, and its declarations replayed, at every reconnect.
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await channel.close()
            raise
        return topology

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
            channel = await self._open_channel()
            try:
                for name in wire.inbox_queue_names(self.namespace, agent_id, self.queue_type):
                    with map_exceptions(
                        declaration_errors("inbox", name, self.namespace, passive=True)
                    ):
                        await channel.declare_queue(name, passive=True)
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


class Outage:
    """One episode of a queue being unavailable: logged when it starts and when it is
    over, not per attempt, with a pause between attempts that grows to 5 s.

    Args:
        what: names what waits ("agent writer's inbox"), for the log lines.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self._backoff_s = 0.1

    def note(self, exc: BaseException) -> None:
        """An attempt failed for a temporary reason."""
        if self.since is None:
            self.since = asyncio.get_running_loop().time()
            log.warning("%s: %s; retrying until it is back", self.what, exc)

    async def pause(self) -> None:
        """Wait before the next attempt (polling: nothing says when a queue is back)."""
        await asyncio.sleep(self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, 5.0)

    def over(self) -> None:
        """An attempt succeeded: end the episode, if there was one."""
        if self.since is not None:
            elapsed = asyncio.get_running_loop().time() - self.since
            log.info("%s: available again after %.1fs", self.what, elapsed)
        self.since, self._backoff_s = None, 0.1


async def retry_unavailable(attempt: Callable[[], Awaitable[T]], timeout_s: float, what: str) -> T:
    """``attempt()``, again while it raises QueueUnavailableError, for up to
    ``timeout_s`` (then that error is raised); see :class:`Outage`."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    outage = Outage(what)
    while True:
        try:
            result = await attempt()
        except QueueUnavailableError as exc:
            if loop.time() > give_up:
                raise
            outage.note(exc)
            await outage.pause()
            continue
        outage.over()
        return result
