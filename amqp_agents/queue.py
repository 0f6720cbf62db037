"""MessageQueue: agents' inboxes on RabbitMQ, with confirmed sends and durable history.

One robust connection per MessageQueue. Publishing uses one channel with publisher
confirms and ``mandatory``: :meth:`MessageQueue.send` returns only after the broker has
taken responsibility for the message, and raises a typed error when it did not.

The publish path goes one layer below aio-pika, to the aiormq channel under its
channel, with pamqp properties built straight from :class:`wire.Outgoing`: the same
frames, confirms and returns as ``Exchange.publish``, without an intermediate
``aio_pika.Message`` per send.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import aiormq
from aio_pika import DeliveryMode
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from aiormq.exceptions import ChannelAccessRefused
from pamqp import encode
from pamqp.commands import Basic

from . import wire
from ._properties import FastProperties
from .connection import MAX_REFUSED_RECONNECTS, connect, redact_url, resolve_url
from .errors import (
    BrokerConnectionError,
    ConfigError,
    InboxFullError,
    InvalidMessageError,
    MessageTooLargeError,
    NoRouteError,
    PublishTimeoutError,
    TopologyError,
    UnknownRecipientError,
)
from .errors import DeliveryError as AgentsDeliveryError
from .history import DEFAULT_SCAN_TIMEOUT, HistoryQuery, ProgressCallback, scan_history
from .message import Message, validate_agent_id
from .rpc import ReplyListener
from .topology import Topology

log = logging.getLogger(__name__)

Callback = Callable[[Message], Awaitable[None] | None]

SPARE_DECLARERS = 7
"""Extra channels declaring inboxes while the topology channel is busy (see ensure_inbox)."""


class Subscription:
    """A tap on an agent's traffic; :meth:`cancel` removes it."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, tag: str) -> None:
        self._channel = channel
        self._queue = queue
        self._tag = tag

    async def cancel(self) -> None:
        """Stop the tap and delete its private queue."""
        if not self._channel.is_closed:
            await self._queue.cancel(self._tag)
            await self._channel.close()


class MessageQueue:
    """Send and receive agent messages through RabbitMQ.

    Args:
        url: broker URL (vhost in the path, ``amqps://`` for TLS); default ``$AMQP_URL``,
            else ``amqp://guest:guest@localhost:5672/``.
        namespace: prefix of every exchange and queue name (see docs/wire-format.md).
        publish_timeout_s: how long :meth:`send` waits for the broker's confirm.
        connect_timeout_s: how long connecting may take.
        reconnect_interval_s: pause between reconnection attempts after the link to
            the broker is lost.
        max_body_bytes: larger messages are refused before publishing.
        passive: only check that the topology exists; never create it.
        inbox_max_length: length limit of inboxes this queue declares; a full inbox
            refuses new messages (:class:`InboxFullError`).
        inbox_max_lengths: per-agent limits that override ``inbox_max_length`` (every
            process that declares an inbox must use the same limit).
        history_max_age: retention of the history stream by age (e.g. ``"7D"``).
        history_max_bytes: retention of the history stream by size.
        connection_name: shown by the broker (``rabbitmqctl list_connections``).
        ssl_context: TLS settings for an ``amqps://`` URL (see ``connection.tls_context``).
        reply_owner: the agent id in this connection's reply queue name
            (``{ns}.reply.{owner}.{hex}``), so a broker permission can grant exactly it.
        authenticate_senders: the connection's RabbitMQ user is an agent (its user
            name in the URL is the agent id). Every publish carries the AMQP
            ``user_id``, which RabbitMQ checks against the connection's user, and only
            messages sent as that agent may be sent; a delivery whose ``user_id`` is
            missing or differs from its sender is moved to ``{ns}.dead`` unhandled.
            Every agent of the namespace should run so (docs/deploy.md).
        max_refused_reconnects: reconnection attempts the broker may refuse in a row
            (deleted user, changed password, revoked vhost) before this queue gives up
            for good: see :meth:`wait_failed`.

    Use as ``async with MessageQueue(url, namespace="prod") as queue: ...``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "agents",
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
        authenticate_senders: bool = False,
        max_refused_reconnects: int = MAX_REFUSED_RECONNECTS,
    ) -> None:
        self.url = resolve_url(url)
        self.namespace = wire.validate_namespace(namespace)
        self.publish_timeout_s = publish_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_interval_s = reconnect_interval_s
        self.max_body_bytes = max_body_bytes
        self.passive = passive
        self.connection_name = connection_name or f"amqp-agents pid={os.getpid()}"
        self.ssl_context = ssl_context
        self.reply_owner = None if reply_owner is None else validate_agent_id(reply_owner)
        self.user_id = _agent_user(self.url) if authenticate_senders else None
        """The agent this connection authenticates as (``authenticate_senders``), else None."""
        self.max_refused_reconnects = max_refused_reconnects
        self._given_up: asyncio.Future[BrokerConnectionError] | None = None
        self._topology_options: dict[str, Any] = {
            "passive": passive,
            "inbox_max_length": inbox_max_length,
            "inbox_max_lengths": dict(inbox_max_lengths or {}),
            "history_max_age": history_max_age,
            "history_max_bytes": history_max_bytes,
        }
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchange_name = wire.exchange_name(self.namespace)
        self._topology: Topology | None = None
        self._topology_lock = asyncio.Lock()
        self._idle_declarers: asyncio.Queue[Topology] = asyncio.Queue()
        self._spare_declarers_made = 0
        self._declaring = False
        self.declared_queues: set[str] = set()
        """Names of every queue this MessageQueue declared (kept across reconnects)."""
        self._replies: ReplyListener | None = None
        self._replies_lock = asyncio.Lock()
        self._default_exchange_channel: AbstractChannel | None = None
        self._default_exchange_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"MessageQueue({redact_url(self.url)!r}, namespace={self.namespace!r})"

    # -- lifetime ---------------------------------------------------------------------

    async def connect(self) -> MessageQueue:
        """Connect and declare (or, passive, check) the namespace's base topology.

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
        connection.given_up.add_done_callback(self._on_given_up)
        try:
            self._publish_channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            await self.topology()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Close the connection; unacknowledged deliveries go back to their queues."""
        connection, self._connection = self._connection, None
        self._topology = None
        self._replies = None
        self._default_exchange_channel = None
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

    async def __aenter__(self) -> MessageQueue:
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

    async def channel(self, *, prefetch: int | None = None) -> AbstractChannel:
        """A new channel on this connection (callers close it).

        While the connection is being re-established this waits for it, up to
        ``connect_timeout_s``.

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

    async def topology(self) -> Topology:
        """The namespace's declarations, made on a channel of their own.

        Right after a broker restart its durable queues take a moment to come back
        (RabbitMQ: "home node ... is down or inaccessible"); meanwhile the base
        declarations are retried, for up to ``connect_timeout_s``.
        """
        async with self._topology_lock:
            if self._topology is None or self._topology.channel.is_closed:
                self._topology = await self._declare_base()
            return self._topology

    async def _declare_base(self) -> Topology:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.connect_timeout_s
        while True:
            channel = await self._open_channel()
            topology = Topology(
                channel,
                self.namespace,
                declared=self.declared_queues,
                **self._topology_options,
            )
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
        validate_agent_id(agent_id)
        topology = await self.topology()
        if not self._declaring:
            self._declaring = True
            try:
                async with self._topology_lock:
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
                    return Topology(
                        await self._open_channel(),
                        self.namespace,
                        declared=self.declared_queues,
                        **self._topology_options,
                    )
                except BaseException:
                    self._spare_declarers_made -= 1
                    raise
            spare = await self._idle_declarers.get()
            if not spare.channel.is_closed:  # a failed declaration closes its channel
                return spare
            self._spare_declarers_made -= 1

    async def restore_inbox(self, agent_id: str) -> None:
        """Declare the agent's inbox and its bindings again, e.g. after it was deleted.

        In passive mode, only check that it exists again.

        Raises:
            TopologyError: passive mode and the inbox is gone, or it was re-created
                elsewhere with other arguments.
        """
        validate_agent_id(agent_id)
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
        async with self._topology_lock:
            topology.forget_inbox(agent_id)
            await topology.declare_inbox(agent_id)

    # -- sending ----------------------------------------------------------------------

    async def send(
        self,
        message: Message,
        *,
        reply_to: str | None = None,
        deadline: datetime | None = None,
        extra_headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish ``message`` to its recipient and wait for the broker's confirm.

        Args:
            message: the envelope; an empty recipient lets routes distribute it.
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
        if self.user_id is not None and message.sender != self.user_id:
            raise InvalidMessageError(_not_our_sender(message, self.user_id))
        out = wire.encode(
            message,
            reply_to=reply_to,
            deadline=deadline,
            extra_headers=extra_headers,
            max_body_bytes=self.max_body_bytes,
        )
        await self._publish(
            self._exchange_name,
            out.routing_key,
            out.body,
            _properties(out, self.user_id),
            message.id,
            message.recipient,
        )

    async def send_to_queue(self, message: Message, queue_name: str) -> None:
        """Publish ``message`` into the reply queue ``queue_name`` (a request's ``reply_to``).

        A reply queue of the namespace (``{ns}.reply.*``) is reached through the
        ``{ns}.replies`` exchange, where it is bound with its own name; the history
        stream is bound there too and keeps a copy, so conversations read back from
        history include replies. Any other name (a foreign client's server-named queue,
        direct reply-to) goes through the default exchange, the AMQP RPC convention,
        with a ``BCC`` of the history stream, on a channel of its own: a user that may
        not write to ``amq.default`` (docs/deploy.md) is refused there without the
        publishing channel, and the sends in flight on it, going down with it.

        Raises:
            DeliveryError: the broker refused it (``ACCESS_REFUSED``: no permission to
                write to the default exchange), or as :meth:`send`.
        """
        if self.user_id is not None and message.sender != self.user_id:
            raise InvalidMessageError(_not_our_sender(message, self.user_id))
        if wire.is_reply_queue(self.namespace, queue_name):
            out = wire.encode(message, max_body_bytes=self.max_body_bytes)
            await self._publish(
                wire.reply_exchange_name(self.namespace),
                queue_name,
                out.body,
                _properties(out, self.user_id),
                message.id,
            )
            return
        out = wire.encode(
            message,
            extra_headers={"BCC": [wire.history_name(self.namespace)]},
            max_body_bytes=self.max_body_bytes,
        )
        channel = await self._default_exchange_publisher()
        await self._publish(
            "", queue_name, out.body, _properties(out, self.user_id), message.id, via=channel
        )

    async def _default_exchange_publisher(self) -> AbstractChannel:
        """The channel (confirms on) for answers through the default exchange."""
        async with self._default_exchange_lock:
            channel = self._default_exchange_channel
            if channel is None:
                channel = await self.connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                self._default_exchange_channel = channel
            elif channel.is_closed and isinstance(channel, AbstractRobustChannel):
                # The broker closed it (ACCESS_REFUSED); aio-pika is reopening it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.connect_timeout_s):
                        await channel.ready()
            return channel

    async def dead_letter(
        self,
        incoming: AbstractIncomingMessage,
        *,
        reason: str,
        agent_id: str,
        error: BaseException | None = None,
        attempts: int | None = None,
    ) -> None:
        """Move a delivery to ``{ns}.dead`` with headers saying why, then ack it.

        If the copy cannot be published, the delivery is rejected instead, so the
        inbox's own dead-lettering still keeps it (reason ``rejected``).
        """
        headers: dict[str, Any] = {wire.H_DEAD_REASON: reason, wire.H_DEAD_AGENT: agent_id}
        if error is not None:
            headers[wire.H_DEAD_ERROR_TYPE] = type(error).__name__
            headers[wire.H_DEAD_ERROR_MESSAGE] = str(error)[:4000]
        if attempts is not None:
            headers[wire.H_DEAD_ATTEMPTS] = attempts
        try:
            await self.republish(
                incoming,
                exchange=wire.dead_letter_exchange_name(self.namespace),
                routing_key=incoming.routing_key or "",
                headers=headers,
            )
        except Exception:
            log.exception("could not dead-letter %s; rejecting it instead", incoming.message_id)
            await incoming.reject(requeue=False)
            return
        log.warning(
            "dead-lettered message %s for %s: %s%s",
            incoming.message_id,
            agent_id,
            reason,
            f" ({type(error).__name__}: {error})" if error else "",
        )
        await incoming.ack()

    async def republish(
        self,
        incoming: AbstractIncomingMessage,
        *,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
    ) -> None:
        """Publish a confirmed copy of a delivery (body, properties, headers + ``headers``).

        Used to move a delivery elsewhere (dead letters, retry queues) before acking it,
        so that it is never in no queue at all. The copy carries no AMQP expiration:
        a deadline travels in its header. Its ``user_id`` is ours (or none): the broker
        refuses one that is not this connection's user (see :func:`_copied_headers`
        for what else is not copied).

        Raises:
            DeliveryError and subclasses, as :meth:`send`.
        """
        copy = Basic.Properties(
            headers={**_copied_headers(incoming.headers), **headers},
            content_type=incoming.content_type,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=incoming.priority,
            correlation_id=incoming.correlation_id,
            reply_to=incoming.reply_to,
            message_id=incoming.message_id,
            timestamp=incoming.timestamp,
            message_type=incoming.type,
            user_id=self.user_id,
        )
        await self._publish(exchange, routing_key, incoming.body, copy, incoming.message_id or "?")

    async def replies(self) -> ReplyListener:
        """The listener of this connection's private reply queue (started on first use)."""
        if self._replies is not None:
            return self._replies
        async with self._replies_lock:
            if self._replies is None:
                listener = ReplyListener(
                    await self._open_channel(),
                    self.namespace,
                    self.reply_owner,
                    authenticate=self.user_id is not None,
                )
                await listener.start()
                self._replies = listener
            return self._replies

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        message_id: str,
        recipient: str | None = None,
        via: AbstractChannel | None = None,
    ) -> None:
        """Publish with ``mandatory`` and wait for the broker's confirm; map failures.

        What ``aio_pika.Exchange.publish`` does, on the aiormq channel under the
        publishing channel (or ``via``; a robust channel swaps it after a reconnect, so
        it is looked up per publish): a returned message raises PublishError, a nack
        DeliveryError.
        """
        channel = via or self._publish_channel
        if channel is None:
            raise BrokerConnectionError(f"{self!r} is not connected; call connect() first")
        try:
            if channel.is_closed:
                raise ChannelInvalidStateError(f"{channel!r} closed")
            # aiormq's Channel (its abstract interface lacks basic_publish's ``wait``).
            underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
            await underlay.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                timeout=self.publish_timeout_s,
                # Wait for the confirm only, not also for the frame to reach the socket:
                # the confirm implies it, and the connection's bounded write queue still
                # holds publishers back when the socket is slow.
                wait=False,
            )
        except PublishError:
            if recipient is None:
                raise AgentsDeliveryError(
                    f"nothing bound for {routing_key!r} on {exchange!r} (message {message_id})"
                ) from None
            if not recipient:
                raise NoRouteError(
                    f"no route matches {routing_key!r} (message {message_id})"
                ) from None
            raise UnknownRecipientError(recipient, message_id) from None
        except DeliveryError as exc:
            if isinstance(exc.frame, Basic.Nack):
                raise InboxFullError(
                    f"the broker refused message {message_id} for {routing_key!r}: "
                    "a destination queue is full (x-overflow reject-publish)"
                ) from None
            raise AgentsDeliveryError(f"message {message_id} not delivered: {exc}") from None
        except TimeoutError:
            raise PublishTimeoutError(
                f"no confirm for message {message_id} within {self.publish_timeout_s}s "
                "(is the broker blocked by a memory or disk alarm?)"
            ) from None
        except ChannelPreconditionFailed as exc:
            if "message size" not in str(exc):
                raise BrokerConnectionError(
                    f"connection lost while sending message {message_id}: {exc!r}"
                ) from None
            # The broker's max_message_size is below our max_body_bytes. It closed the
            # publishing channel; aio-pika reopens it.
            raise MessageTooLargeError(
                f"the broker refused message {message_id} as too large (set max_body_bytes"
                f" below its max_message_size): {exc}"
            ) from None
        except ChannelAccessRefused as exc:
            # No write permission on the exchange (or topic key); the broker closed the
            # channel, which aio-pika reopens.
            raise AgentsDeliveryError(
                f"the broker refused message {message_id} on exchange"
                f" {exchange or 'amq.default'!r}: {exc}"
            ) from None
        except (ChannelInvalidStateError, *CONNECTION_EXCEPTIONS) as exc:
            if (failure := self.failure) is not None:
                raise BrokerConnectionError(f"message {message_id} not sent: {failure}") from None
            raise BrokerConnectionError(
                f"connection lost while sending message {message_id}: {exc!r}"
            ) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is being cancelled
            # aiormq fails pending confirms with a bare CancelledError when it drops a
            # link it found dead (missed heartbeats): the link is lost, not our caller.
            raise BrokerConnectionError(
                f"connection lost while sending message {message_id} (no heartbeat)"
            ) from None
        except Exception as exc:
            # aiormq fails pending confirms with whatever closed the link, at times a bare
            # Exception (seen on the broker's stop_app): the outcome is unknown, the link
            # is gone, and the caller needs a typed error to decide whether to resend.
            raise BrokerConnectionError(
                f"link failed while sending message {message_id}; it may or may not have"
                f" been delivered: {exc!r}"
            ) from None

    # -- receiving --------------------------------------------------------------------

    async def receive(self, agent_id: str, timeout: float | None = None) -> Message | None:
        """Take the next message from the agent's inbox, highest priority first.

        Waits up to ``timeout`` seconds (forever if None); returns None on timeout.
        An undecodable message is moved to ``{ns}.dead`` and the wait goes on.
        """
        await self.ensure_inbox(agent_id)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        channel = await self.channel(prefetch=1)
        try:
            queue = await channel.get_queue(wire.inbox_name(self.namespace, agent_id), ensure=False)
            while True:
                remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
                incoming = await _take_one(queue, remaining)
                if incoming is None:
                    return None
                message = await self.decode_delivery(incoming, agent_id)
                if message is not None:
                    await incoming.ack()
                    return message
                # dead-lettered or not for this agent: keep waiting
        finally:
            await channel.close()

    async def receive_all(self, agent_id: str) -> list[Message]:
        """Take every message waiting in the agent's inbox, highest priority first."""
        await self.ensure_inbox(agent_id)
        channel = await self.channel()
        messages: list[Message] = []
        try:
            queue = await channel.get_queue(wire.inbox_name(self.namespace, agent_id), ensure=False)
            while (incoming := await queue.get(no_ack=False, fail=False)) is not None:
                message = await self.decode_delivery(incoming, agent_id)
                if message is not None:
                    await incoming.ack()
                    messages.append(message)
        finally:
            await channel.close()
        return messages

    def accept(self, message: Message, agent_id: str) -> Message | None:
        """What ``agent_id`` should see of a message taken from its inbox.

        The plain queue hands every message over unchanged. A routing queue overrides
        this to finish on the consumer side what a topic binding cannot express
        (filters, sender prefixes) and to apply transforms; returning None means the
        message was not meant for this agent and is acknowledged without handling.
        """
        return message

    async def decode_delivery(
        self, incoming: AbstractIncomingMessage, agent_id: str
    ) -> Message | None:
        """Decode and :meth:`accept` a delivery; None if it was dead-lettered or skipped.

        Bodies over ``max_body_bytes`` are refused unparsed, as when sending.
        """
        try:
            message = wire.decode(
                incoming, inbox_owner=agent_id, max_body_bytes=self.max_body_bytes
            )
        except InvalidMessageError as exc:
            await self.dead_letter(incoming, reason=f"undecodable: {exc}", agent_id=agent_id)
            return None
        except Exception as exc:
            # A decoder bug must not leave a foreign message unacknowledged for ever.
            log.exception("decoding message %s failed unexpectedly", incoming.message_id)
            await self.dead_letter(
                incoming, reason=f"undecodable: {type(exc).__name__}", agent_id=agent_id
            )
            return None
        if refused := self._refusal(incoming, message, agent_id):
            await self.dead_letter(incoming, reason=refused, agent_id=agent_id)
            return None
        try:
            accepted = self.accept(message, agent_id)
        except Exception as exc:
            # A route's filter or transform raised: park the message with the reason
            # rather than leave it unacknowledged (stuck) or drop it.
            await self.dead_letter(
                incoming, reason="route filter/transform failed", agent_id=agent_id, error=exc
            )
            return None
        if accepted is None:
            log.debug("message %s is not for %s; acknowledged unhandled", message.id, agent_id)
            await incoming.ack()
        return accepted

    def _refusal(
        self, incoming: AbstractIncomingMessage, message: Message, agent_id: str
    ) -> str | None:
        """Why ``agent_id`` must not act on a decoded delivery, or None.

        Misaddressed: a copy another publisher's CC/BCC put into this inbox (see
        :func:`wire.addressed_to`). Unauthenticated (``authenticate_senders``): the
        ``user_id`` RabbitMQ validated is not the sender's; a copy we published
        ourselves (a retry) carries our own.
        """
        if not wire.addressed_to(incoming.routing_key, message.recipient, self.namespace, agent_id):
            return (
                f"misaddressed: routing key {incoming.routing_key!r}, recipient"
                f" {message.recipient!r}: not for {agent_id!r}"
            )
        if self.user_id is not None and incoming.user_id not in (message.sender, self.user_id):
            return (
                f"unauthenticated sender: user_id {incoming.user_id!r} is not the sender"
                f" {message.sender!r}"
            )
        return None

    async def subscribe(self, agent_id: str, callback: Callback) -> Subscription:
        """Call ``callback`` with a copy of every message addressed to ``agent_id``.

        A tap: the messages stay in the inbox for the agent. The copies come through a
        private queue that lives as long as the subscription (or the connection).
        """
        await self.ensure_inbox(agent_id)
        channel = await self.channel(prefetch=100)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(wire.exchange_name(self.namespace), wire.inbox_binding_key(agent_id))

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            async with incoming.process(ignore_processed=True):
                try:
                    message = wire.decode(incoming, inbox_owner=agent_id)
                except InvalidMessageError as exc:
                    log.warning("tap on %s: undecodable message skipped: %s", agent_id, exc)
                    return
                if refused := self._refusal(incoming, message, agent_id):
                    log.warning("tap on %s: message skipped: %s", agent_id, refused)
                    return
                try:
                    result = callback(message)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("tap callback for %s raised", agent_id)

        tag = await queue.consume(on_message)
        return Subscription(channel, queue, tag)

    # -- history ----------------------------------------------------------------------

    async def get_conversation(
        self,
        conversation_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        timeout: float | None = DEFAULT_SCAN_TIMEOUT,
        progress: ProgressCallback | None = None,
    ) -> list[Message]:
        """A conversation's retained messages, in send order (see ``HistoryQuery``)."""
        query = HistoryQuery(
            conversation_id=conversation_id,
            since=since,
            until=until,
            limit=limit,
            newest_first=newest_first,
        )
        return await self._read_history(query, timeout, progress)

    async def get_agent_history(
        self,
        agent_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        timeout: float | None = DEFAULT_SCAN_TIMEOUT,
        progress: ProgressCallback | None = None,
    ) -> list[Message]:
        """The retained messages sent by or to ``agent_id``, in send order."""
        query = HistoryQuery(
            agent_id=agent_id, since=since, until=until, limit=limit, newest_first=newest_first
        )
        return await self._read_history(query, timeout, progress)

    async def _read_history(
        self, query: HistoryQuery, timeout: float | None, progress: ProgressCallback | None
    ) -> list[Message]:
        channel = await self.connection.channel(publisher_confirms=True)
        try:
            return await scan_history(
                channel, self.namespace, query, timeout=timeout, progress=progress
            )
        finally:
            await channel.close()


PriorityMessageQueue = MessageQueue
"""The tutorial's name: every inbox has native AMQP priority, so one class does both."""


def _copied_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """A delivery's headers, fit to be published again by us.

    ``CC`` and ``BCC`` are dropped: kept, they would make the broker copy the message
    into more queues on our authority (a foreign sender's way around its own
    permissions). A value pamqp decoded but cannot encode again (bytes that are not
    UTF-8, a double too large for AMQP's float) is kept as its repr.
    """
    copied: dict[str, Any] = {}
    for key, value in (headers or {}).items():
        if key in ("CC", "BCC"):
            continue
        try:
            encode.encode_table_value(value)
        except (TypeError, ValueError, OverflowError, struct.error):
            value = repr(value)[:1000]
        copied[key] = value
    return copied


def _agent_user(url: str) -> str:
    """The user name of ``url``, which must be an agent id (``authenticate_senders``).

    Raises:
        ConfigError: no user name, or one that is not an agent id.
    """
    user = unquote(urlsplit(url).username or "")
    try:
        return validate_agent_id(user)
    except InvalidMessageError:
        raise ConfigError(
            f"authenticate_senders: the URL's user name {user!r} must be the agent's id"
        ) from None


def _not_our_sender(message: Message, user_id: str) -> str:
    return (
        f"message {message.id}: sender {message.sender!r} is not this connection's agent"
        f" {user_id!r} (authenticate_senders)"
    )


def _properties(out: wire.Outgoing, user_id: str | None = None) -> Basic.Properties:
    """The AMQP properties of an encoded message (docs/wire-format.md, "Properties")."""
    return FastProperties(
        content_type=wire.CONTENT_TYPE,
        headers=out.headers,
        delivery_mode=DeliveryMode.PERSISTENT,
        priority=out.priority,
        correlation_id=out.correlation_id,
        reply_to=out.reply_to,
        expiration=None if out.expiration_s is None else str(int(out.expiration_s * 1000)),
        message_id=out.message_id,
        timestamp=out.timestamp,
        message_type=out.type,
        user_id=user_id,
    )


async def _take_one(queue: AbstractQueue, timeout: float | None) -> AbstractIncomingMessage | None:
    """Consume exactly one delivery (prefetch 1), cancelling before it is acked."""
    got: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()

    async def on_message(incoming: AbstractIncomingMessage) -> None:
        if got.done():
            await incoming.nack(requeue=True)
        else:
            got.set_result(incoming)

    tag = await queue.consume(on_message)
    try:
        return await asyncio.wait_for(got, timeout)
    except TimeoutError:
        return None
    finally:
        await queue.cancel(tag)
