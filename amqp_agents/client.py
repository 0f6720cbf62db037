"""BrokerClient: one connection to RabbitMQ and what agents do through it.

A façade over the parts that each do one job: the connection and its channels (here),
declaring (:mod:`declaring`), publishing (:mod:`publish`), settling deliveries
(:mod:`settling`: :mod:`admission` decides, :mod:`redelivery` moves them), pull
receive and taps (:mod:`pull`), requests and replies (:mod:`rpc`) and history
(:mod:`history`).

The publish path: :meth:`BrokerClient.send` -> ``Publisher.send`` (``wire.encode``) ->
``Publisher.publish`` (confirm, error table). The consume path: a delivery ->
:meth:`BrokerClient.admit` (``admission.admit``) -> a handler (agent.py, then
outcomes.py: reply, retry or dead letter) or the caller of :meth:`BrokerClient.receive`.
Settling a delivery (admit, dead-letter, retry) is :class:`settling.Settling`, mixed in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Unpack

from aio_pika.abc import (
    AbstractChannel,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from . import cancellation, cards, instrumentation, pull, task_follow, wire
from .broker_url import BrokerUrl
from .connection import MAX_REFUSED_RECONNECTS, connect, redact_url, resolve_url
from .declaring import Declarations
from .errors import BrokerConnectionError
from .history import HistoryBounds, HistoryQuery
from .history_reader import HistoryReader
from .layout import InboxOptions, NamespaceOptions, nack_means_unavailable
from .message import Message, validate_agent_id
from .publish import Publisher
from .routing import MessageRouter
from .rpc import ReplyListener, RpcClient, StatusCallback, TaskHandle
from .senders import SenderPolicy
from .settling import Settling
from .topology import Topology

log = logging.getLogger(__name__)


class BrokerClient(Settling):
    """Send and receive agent messages through RabbitMQ (the tutorial's MessageQueue).

    Args:
        url: broker URL (vhost in the path, ``amqps://`` for TLS); default ``$AMQP_URL``,
            else ``amqp://guest:guest@localhost:5672/``. A cluster: its nodes in the
            host part, ``amqp://u:p@h1:5672,h2:5672,h3:5672/vhost``, or a list of URLs;
            the client reconnects to the next node that answers (docs/deploy.md).
        namespace: prefix of every exchange and queue name (see docs/wire-format.md).
        router: routes for messages sent without a recipient. On :meth:`connect` every
            unfiltered route's keys are bound to its destinations' inboxes (and
            history), so the broker fans a routed message out to exactly those; a
            filtered route is not bound: :meth:`send` runs the filter and adds a
            ``BCC`` per destination that keeps the message. Each consumer applies the
            transforms (:func:`admission.admit`). Every process consuming a routed
            inbox should use the same routes.
        publish_timeout_s: how long :meth:`send` waits for the broker's confirm.
        connect_timeout_s: how long connecting may take.
        reconnect_interval_s: pause between reconnection attempts after the link to
            the broker is lost.
        max_body_bytes: larger messages are refused before publishing.
        passive: only check that the topology exists; never create it.
        inbox_max_length: length limit of inboxes this client declares; a full inbox
            refuses new messages (:class:`InboxFullError`).
        inbox_max_lengths: per-agent limits that override ``inbox_max_length`` (every
            process that declares an inbox must use the same limit).
        queue_type: ``"quorum"`` (default: replicated; an inbox is a queue per priority
            lane) or ``"classic"`` (one node). The same in every process of a namespace
            (docs/wire-format.md; docs/deploy.md, "Running on a cluster").
        inbox_delivery_limit(s): quorum: deliveries without an ack (its process died)
            before a lane moves a message to ``{ns}.dead``; per agent, as max_length(s).
        history: ``"stream"`` (default) or ``"off"`` (no ``{ns}.history``; queries raise
            HistoryOffError); history_db: the PostgreSQL index queries read (docs/history.md).
        history_replicas, history_max_age (``"7D"``), history_max_bytes: the history
            stream's nodes (None: all of them) and its retention by age and by size.
        connection_name: shown by the broker (``rabbitmqctl list_connections``).
        ssl_context: TLS settings for an ``amqps://`` URL (see ``connection.tls_context``).
        reply_owner: the agent id in this connection's reply queue name
            (``{ns}.reply.{owner}.{hex}``), so a broker permission can grant exactly it.
        senders: RabbitMQ user -> the agent ids it may speak for besides itself (one
            user serving several agents); every process of the namespace needs the
            same map. Every publish carries our user as the AMQP ``user_id``, which
            RabbitMQ validates, and a delivery whose ``user_id`` may not speak for its
            sender is moved to ``{ns}.dead`` unhandled (the rule: senders.py).
        trust_sender_word: believe the claimed sender without checking ``user_id``
            (a closed development vhost only; logged as a warning at connect).
        authenticate_senders: deprecated, now the default for receiving; kept as the
            strict form for sending: the URL's user name must be an agent id and
            only messages sent as it may be sent (``senders={user: [user]}``).
        max_refused_reconnects: reconnection attempts the broker may refuse in a row
            (deleted user, changed password, revoked vhost) before this client gives up
            for good: see :meth:`wait_failed`.

    Use as ``async with MessageQueue(url, namespace="prod") as queue: ...``.
    """

    def __init__(
        self,
        url: BrokerUrl | None = None,
        *,
        namespace: str = "agents",
        router: MessageRouter | None = None,
        publish_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        reconnect_interval_s: float = 1.0,
        max_body_bytes: int = wire.DEFAULT_MAX_BODY_BYTES,
        passive: bool = False,
        inbox_max_length: int | None = None,
        history_max_age: str = "7D",
        history_max_bytes: int = 1_000_000_000,
        connection_name: str | None = None,
        inbox_max_lengths: Mapping[str, int | None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reply_owner: str | None = None,
        senders: Mapping[str, Iterable[str]] | None = None,
        trust_sender_word: bool = False,
        authenticate_senders: bool = False,
        max_refused_reconnects: int = MAX_REFUSED_RECONNECTS,
        queue_type: str = wire.DEFAULT_QUEUE_TYPE,
        inbox_delivery_limit: int = wire.DEFAULT_DELIVERY_LIMIT,
        inbox_delivery_limits: Mapping[str, int] | None = None,
        history_replicas: int | None = None,
        history: str = wire.DEFAULT_HISTORY,
        history_db: str | None = None,
    ) -> None:
        self.url = resolve_url(url)
        self.namespace = wire.validate_namespace(namespace)
        self.router = router
        self.publish_timeout_s = publish_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_interval_s = reconnect_interval_s
        self.max_body_bytes = max_body_bytes
        self.passive = passive
        self.connection_name = connection_name or f"amqp-agents pid={os.getpid()}"
        self.ssl_context = ssl_context
        self.reply_owner = None if reply_owner is None else validate_agent_id(reply_owner)
        self.senders = SenderPolicy.of(
            self.url,
            senders=senders,
            trust_sender_word=trust_sender_word,
            authenticate_senders=authenticate_senders,
        )
        """Who this connection is (``own_user``) and whom each user may speak for."""
        self.max_refused_reconnects = max_refused_reconnects
        self._given_up: asyncio.Future[BrokerConnectionError] | None = None
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self.declared_queues: set[str] = set()
        """Names of every queue this client declared (kept across reconnects)."""
        lanes, mode = wire.validate_queue_type(queue_type), wire.validate_history_mode(history)
        self.options = NamespaceOptions(
            lanes, history_max_age, history_max_bytes, history_replicas, mode
        )
        self._history = HistoryReader(self, history_db)
        self.inbox = InboxOptions(inbox_max_length, inbox_delivery_limit)
        self.inboxes = self.inbox.per_agent(inbox_max_lengths, inbox_delivery_limits)
        self._declarations = Declarations(
            self._open_channel,
            self.namespace,
            timeout_s=connect_timeout_s,
            declared=self.declared_queues,
            passive=passive,
            options=self.options,
            inbox=self.inbox,
            inboxes=self.inboxes,
        )
        self._rpc = RpcClient(
            self._open_channel, self.send, self.namespace, self.reply_owner, senders=self.senders
        )
        self._rpc.cancel = cancellation.canceller(self)  # for TaskHandle.cancel()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r}, namespace={self.namespace!r})"

    # -- lifetime ---------------------------------------------------------------------

    async def connect(self) -> BrokerClient:
        """Connect, declare (or, passive, check) the base topology, bind the routes.

        Raises:
            BrokerConnectionError: the broker cannot be reached or refused us.
            TopologyError: passive mode and the topology is missing, or a conflict.
        """
        if self._connection is not None:
            return self
        connection = await connect(
            self.url,
            name=self.connection_name,
            timeout_s=self.connect_timeout_s,
            ssl_context=self.ssl_context,
            reconnect_interval_s=self.reconnect_interval_s,
            max_refused_reconnects=self.max_refused_reconnects,
        )
        self._connection, self._given_up = connection, connection.given_up
        self.senders.warn_if_trusting(self.namespace)
        connection.given_up.add_done_callback(self._on_given_up)
        instrumentation.connected(connection)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._publisher = Publisher(
                connection,
                channel,
                namespace=self.namespace,
                senders=self.senders,
                max_body_bytes=self.max_body_bytes,
                timeout_s=self.publish_timeout_s,
                connect_timeout_s=self.connect_timeout_s,
                failure=lambda: self.failure,
                nack_means_unavailable=lambda agent: nack_means_unavailable(
                    self.options, self.inboxes.get(agent, self.inbox)
                ),
            )
            await self.topology()
            if self.router is not None:
                await self.bind_routes()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Close the connection; unacknowledged deliveries go back to their queues."""
        connection, self._connection = self._connection, None
        await self._history.close()
        self._declarations.reset()
        self._rpc.reset()
        self._publisher = None
        if connection is not None and not connection.is_closed:
            await connection.close()

    @property
    def failure(self) -> BrokerConnectionError | None:
        """Why the connection stopped reconnecting for good, if it did (else None)."""
        given_up = self._given_up
        return given_up.result() if given_up is not None and given_up.done() else None

    async def wait_failed(self) -> BrokerConnectionError:
        """Return, with the error, once the broker kept refusing us and the connection
        stopped reconnecting (``max_refused_reconnects``); every send then fails.

        It never returns while the connection is fine or reconnecting for another
        reason: wait for it alongside something else (see ``MessagePassingAgent.start``).

        Raises:
            BrokerConnectionError: not connected.
        """
        if self._given_up is None:
            raise BrokerConnectionError(f"{self!r} is not connected; call connect() first")
        return await asyncio.shield(self._given_up)

    def _on_given_up(self, given_up: asyncio.Future[BrokerConnectionError]) -> None:
        if not given_up.cancelled():
            log.error("%r: %s", self, given_up.result())

    async def __aenter__(self) -> BrokerClient:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connection(self) -> AbstractRobustConnection:
        """The open connection; raises if :meth:`connect` was not called."""
        if self._connection is None:
            raise BrokerConnectionError(f"{self!r} is not connected; call connect() first")
        return self._connection

    @property
    def publisher(self) -> Publisher:
        """The confirmed publisher of the open connection."""
        if self._publisher is None:
            raise BrokerConnectionError(f"{self!r} is not connected; call connect() first")
        return self._publisher

    async def channel(self, *, prefetch: int | None = None) -> AbstractChannel:
        """A new channel on this connection (callers close it); while the connection is
        being re-established this waits for it, up to ``connect_timeout_s``.

        Raises:
            BrokerConnectionError: the connection is down (and stayed down).
        """
        channel = await self._open_channel()
        if prefetch is not None:
            await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def _open_channel(self) -> AbstractChannel:
        connection = self.connection
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await connection.ready()
                return await connection.channel()
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            # (These include the bare RuntimeError aio-pika raises for a closed connection.)
            raise BrokerConnectionError(
                f"{self!r}: cannot open a channel, the connection is down: {exc!r}"
            ) from None

    # -- declaring --------------------------------------------------------------------

    async def topology(self) -> Topology:
        """The namespace's declarations (see :meth:`Declarations.topology`)."""
        return await self._declarations.topology()

    def inbox_queue_names(self, agent_id: str) -> tuple[str, ...]:
        """``agent_id``'s inbox (classic) or lanes (quorum), highest priority first."""
        return wire.inbox_queue_names(self.namespace, agent_id, self.options.queue_type)

    async def ensure_inbox(self, agent_id: str) -> AbstractQueue:
        """Declare the agent's inbox if needed (idempotent); return its first queue."""
        return await self._declarations.ensure_inbox(validate_agent_id(agent_id))

    async def restore_inbox(self, agent_id: str) -> None:
        """Declare the agent's inbox and its own and every route's bindings again, e.g.
        after it was deleted. In passive mode, only check that it exists again.

        Raises:
            TopologyError: passive mode and the inbox is gone, or it was re-created
                elsewhere with other arguments.
        """
        await self._declarations.restore_inbox(validate_agent_id(agent_id))
        if self.router is not None:
            await self.bind_routes()

    async def bind_routes(self) -> None:
        """Bind each route's destination inboxes and the history stream with its key.

        Idempotent; routes added to the router after :meth:`connect` need it. Declares
        the destinations' inboxes, so a routed message is kept even before its agent
        first starts. In passive mode nothing is bound: the bindings must exist.
        """
        if self.router is not None:
            count = await self._declarations.bind_routes(self.router)
            log.debug("%r: bound %d route bindings", self, count)

    # -- sending ----------------------------------------------------------------------

    async def send(
        self,
        message: Message,
        *,
        reply_to: str | None = None,
        deadline: datetime | None = None,
        extra_headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish ``message`` to its recipient (or along the routes) and wait for the
        broker's confirm.

        Args:
            message: the envelope; an empty recipient lets routes distribute it. It is
                checked against the routes (filters included) before publishing (no
                route taking it is an error here, not a message nobody reads) and
                published once: the bindings copy it into the inboxes of the
                unfiltered routes, a ``BCC`` into those of the filtered routes that
                keep it (the broker cannot run a filter).
            reply_to: the queue where answers must go (AMQP ``reply_to``).
            deadline: the requester gives up then; the broker expires the message.
            extra_headers: more flat header values.

        Raises:
            UnknownRecipientError: no inbox exists for the recipient.
            NoRouteError: no recipient, and no route matches.
            InboxFullError: the inbox is at its length limit.
            PublishTimeoutError: no confirm within ``publish_timeout_s``.
            MessageTooLargeError / InvalidMessageError: refused before publishing.
            BrokerConnectionError: the connection is down.
        """
        if self.router is not None and not message.recipient:
            extra_headers = self.router.send_headers(message, extra_headers)
        await self.publisher.send(
            message, reply_to=reply_to, deadline=deadline, extra_headers=extra_headers
        )

    async def send_to_queue(self, message: Message, queue_name: str) -> None:
        """Publish ``message`` into the queue ``queue_name``, a request's ``reply_to``
        (see :meth:`Publisher.send_to_queue` for the way it takes).

        Raises:
            DeliveryError: the broker refused it (``ACCESS_REFUSED``: no permission to
                write to the default exchange), or as :meth:`send`.
        """
        await self.publisher.send_to_queue(message, queue_name)

    # -- requests ---------------------------------------------------------------------

    async def replies(self) -> ReplyListener:
        """The listener of this connection's private reply queue (started on first use)."""
        return await self._rpc.listener()

    async def request(
        self, message: Message, *, timeout_s: float, on_status: StatusCallback | None = None
    ) -> TaskHandle:
        """Send a request whose reply comes back to this connection (see :mod:`rpc`)."""
        return await self._rpc.request(message, timeout_s=timeout_s, on_status=on_status)

    async def resubscribe(
        self, task: Message | str, *, since: datetime | None = None, timeout_s: float = 30.0
    ) -> TaskHandle:
        """A handle on a task sent earlier, from this connection or one that was cut:
        its answers so far and to come, read from history (:mod:`task_follow`)."""
        return await task_follow.resubscribe(self, task, since=since, timeout_s=timeout_s)

    async def discover(
        self, *, include_gone: bool = False, timeout_s: float = 10.0
    ) -> list[cards.AgentInfo]:
        """The namespace's agents: their newest cards, and how many consumers each inbox
        has now (:mod:`cards`)."""
        return await cards.discover(self, include_gone=include_gone, timeout_s=timeout_s)

    # -- consuming --------------------------------------------------------------------

    async def receive(self, agent_id: str, timeout: float | None = None) -> Message | None:
        """Take the next message from the agent's inbox, highest priority first.

        Waits up to ``timeout`` seconds (forever if None); returns None on timeout.
        An undecodable message is moved to ``{ns}.dead`` and the wait goes on.
        """
        return await pull.receive(self, agent_id, timeout)

    async def receive_all(self, agent_id: str) -> list[Message]:
        """Take every message waiting in the agent's inbox, highest priority first."""
        return await pull.receive_all(self, agent_id)

    async def subscribe(self, agent_id: str, callback: pull.Callback) -> pull.Subscription:
        """Call ``callback`` with a copy of every message addressed to ``agent_id``.

        A tap: the messages stay in the inbox for the agent. The copies come through a
        private queue that lives as long as the subscription (or the connection), bound
        as the inbox is (its own key and its routes' keys), and the tap sees what the
        agent would (the routes' filters and transforms applied).
        """
        return await pull.subscribe(self, agent_id, callback)

    # -- history ----------------------------------------------------------------------

    async def get_conversation(
        self, conversation_id: str, **bounds: Unpack[HistoryBounds]
    ) -> list[Message]:
        """A conversation's retained messages, in send order (bounds: ``HistoryBounds``)."""
        return await self._history.read(HistoryQuery(conversation_id=conversation_id), bounds)

    async def get_agent_history(
        self, agent_id: str, **bounds: Unpack[HistoryBounds]
    ) -> list[Message]:
        """The retained messages sent by or to ``agent_id``, in send order."""
        return await self._history.read(HistoryQuery(agent_id=agent_id), bounds)
