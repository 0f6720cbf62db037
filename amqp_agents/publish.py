"""Publishing: one confirmed, ``mandatory`` publish, and the table of what its failures mean.

Every message this library puts on the broker (a send, a reply, a retry, a dead letter)
goes through :meth:`Publisher.publish`, which returns only after the broker took
responsibility for it and otherwise raises one typed error from
:mod:`amqp_agents.errors`, chosen by :func:`publish_errors`' table.

The publish goes two layers below aio-pika: its frames are written straight onto the
connection's write queue of the aiormq channel under its channel (_fast_publish.py),
with properties built straight from :class:`wire.Outgoing`: the same frames, confirms
and returns as ``Exchange.publish``, without an ``aio_pika.Message`` or pamqp's
generic marshalling per send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from aio_pika import DeliveryMode
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from aiormq.exceptions import ChannelAccessRefused
from pamqp.commands import Basic

from . import _fast_publish, instrumentation, wire
from ._properties import FastProperties
from .errors import (
    BrokerConnectionError,
    ErrorTable,
    InboxFullError,
    InboxUnavailableError,
    MessageTooLargeError,
    NoRouteError,
    PublishTimeoutError,
    UnknownRecipientError,
    map_exceptions,
)
from .errors import DeliveryError as AgentsDeliveryError
from .message import Message
from .senders import SenderPolicy


@dataclass(frozen=True, slots=True)
class PublishAttempt:
    """What the error table needs to know about the publish that failed."""

    message_id: str
    exchange: str
    routing_key: str
    recipient: str | None
    """The addressed agent; "" for a routed message; None for a copy (retry, dead letter)."""
    timeout_s: float
    failure: Callable[[], BrokerConnectionError | None]
    """Why the connection gave up reconnecting, if it did (asked when the publish fails)."""
    nack_means_unavailable: bool = False
    """A nack cannot be a full inbox: the recipient's quorum lanes have no length limit
    this client knows of, so a lane without a majority refused it."""


def publish_errors(attempt: PublishAttempt) -> ErrorTable:
    """The one table from broker failures during a publish to our errors (first match wins)."""
    mid, key = attempt.message_id, attempt.routing_key

    def returned(_: BaseException) -> BaseException:
        # basic.return: the broker found no queue bound for the routing key.
        if attempt.recipient is None:
            return AgentsDeliveryError(
                f"nothing bound for {key!r} on {attempt.exchange!r} (message {mid})"
            )
        if not attempt.recipient:
            return NoRouteError(f"no route matches {key!r} (message {mid})")
        return UnknownRecipientError(attempt.recipient, mid)

    def nacked(exc: BaseException) -> BaseException:
        if not isinstance(cast(DeliveryError, exc).frame, Basic.Nack):
            return AgentsDeliveryError(f"message {mid} not delivered: {exc}")
        if attempt.nack_means_unavailable:
            return InboxUnavailableError(
                f"the broker refused message {mid} for {key!r}: an inbox lane of"
                f" {attempt.recipient!r} has no majority of its nodes; nothing has it"
            )
        return InboxFullError(
            f"the broker refused message {mid} for {key!r}: "
            "a destination queue is full (x-overflow reject-publish), or (quorum)"
            " has no majority of its nodes"
        )

    def timed_out(_: BaseException) -> BaseException:
        return PublishTimeoutError(
            f"no confirm for message {mid} within {attempt.timeout_s}s "
            "(is the broker blocked by a memory or disk alarm?)"
        )

    def precondition(exc: BaseException) -> BaseException:
        if "message size" not in str(exc):
            return BrokerConnectionError(f"connection lost while sending message {mid}: {exc!r}")
        # The broker's max_message_size is below our max_body_bytes. It closed the
        # publishing channel; aio-pika reopens it.
        return MessageTooLargeError(
            f"the broker refused message {mid} as too large (set max_body_bytes"
            f" below its max_message_size): {exc}"
        )

    def refused(exc: BaseException) -> BaseException:
        # No write permission on the exchange (or topic key); the broker closed the
        # channel, which aio-pika reopens.
        return AgentsDeliveryError(
            f"the broker refused message {mid} on exchange"
            f" {attempt.exchange or 'amq.default'!r}: {exc}"
        )

    def link_lost(exc: BaseException) -> BaseException:
        if (failure := attempt.failure()) is not None:
            return BrokerConnectionError(f"message {mid} not sent: {failure}")
        return BrokerConnectionError(f"connection lost while sending message {mid}: {exc!r}")

    def cancelled(_: BaseException) -> BaseException | None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return None  # our caller is being cancelled
        # aiormq fails pending confirms with a bare CancelledError when it drops a
        # link it found dead (missed heartbeats): the link is lost, not our caller.
        return BrokerConnectionError(f"connection lost while sending message {mid} (no heartbeat)")

    def unknown(exc: BaseException) -> BaseException:
        # aiormq fails pending confirms with whatever closed the link, at times a bare
        # Exception (seen on the broker's stop_app): the outcome is unknown, the link
        # is gone, and the caller needs a typed error to decide whether to resend.
        return BrokerConnectionError(
            f"link failed while sending message {mid}; it may or may not have"
            f" been delivered: {exc!r}"
        )

    return (
        ((PublishError,), returned),  # before DeliveryError, its base class
        ((DeliveryError,), nacked),
        ((TimeoutError,), timed_out),
        ((ChannelPreconditionFailed,), precondition),
        ((ChannelAccessRefused,), refused),
        ((ChannelInvalidStateError, *CONNECTION_EXCEPTIONS), link_lost),
        ((asyncio.CancelledError,), cancelled),
        ((Exception,), unknown),
    )


def properties(out: wire.Outgoing, user_id: str | None = None) -> Basic.Properties:
    """The AMQP properties of an encoded message (docs/wire-format.md, "Properties")."""
    return FastProperties(
        content_type=wire.CONTENT_TYPE,
        headers=out.headers,
        delivery_mode=DeliveryMode.PERSISTENT,
        priority=out.priority,
        correlation_id=out.correlation_id,
        reply_to=out.reply_to,
        expiration=out.expiration,
        message_id=out.message_id,
        timestamp=out.timestamp,
        message_type=out.type,
        user_id=user_id,
    )


class Publisher:
    """Confirmed publishes on one connection: its publishing channel, and a second one
    for answers through the default exchange.

    Args:
        connection: the open connection.
        channel: the publishing channel (publisher confirms on, returns raise).
        namespace: the namespace messages are sent in.
        senders: whom our RabbitMQ user may speak for; every publish carries that user
            as the AMQP ``user_id``, which RabbitMQ validates (senders.py).
        max_body_bytes: larger messages are refused before publishing.
        timeout_s: how long a publish waits for the broker's confirm.
        connect_timeout_s: how long to wait for a reopening default-exchange channel.
        failure: why the connection stopped reconnecting, if it did (else None).
        nack_means_unavailable: whether a nack of a message to this agent means its
            quorum lanes had no majority (they have no length limit), not a full inbox.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        *,
        namespace: str,
        senders: SenderPolicy,
        max_body_bytes: int,
        timeout_s: float,
        connect_timeout_s: float,
        failure: Callable[[], BrokerConnectionError | None],
        nack_means_unavailable: Callable[[str], bool] = lambda _recipient: False,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self.namespace = namespace
        self.senders = senders
        self.user_id = senders.own_user
        """The ``user_id`` of every message we publish: our connection's user."""
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._failure = failure
        self._nack_means_unavailable = nack_means_unavailable
        self._default_exchange_channel: AbstractChannel | None = None
        self._default_exchange_lock = asyncio.Lock()

    @property
    def channel(self) -> AbstractChannel:
        """The publishing channel (a robust one: aio-pika reopens it after the broker
        closed it, e.g. for a message over its ``max_message_size``)."""
        return self._channel

    async def send(
        self,
        message: Message,
        *,
        reply_to: str | None = None,
        deadline: datetime | None = None,
        extra_headers: dict[str, Any] | None = None,
    ) -> None:
        """Encode ``message`` and publish it to its recipient on ``{ns}`` (or, without
        one, to its routes' bindings).

        Raises:
            InvalidMessageError: our user may not speak for the sender
                (:meth:`SenderPolicy.check_sendable`); or as :func:`wire.encode` and
                :meth:`publish`.
        """
        self.senders.check_sendable(message)
        out = wire.encode(
            message,
            reply_to=reply_to,
            deadline=deadline,
            extra_headers=extra_headers,
            max_body_bytes=self.max_body_bytes,
        )
        await self.publish(
            wire.exchange_name(self.namespace),
            out.routing_key,
            out.body,
            properties(out, self.user_id),
            message.id,
            message.recipient,
        )

    async def send_to_queue(self, message: Message, queue_name: str) -> None:
        """Encode ``message`` and publish it into the queue ``queue_name`` (a reply).

        A reply queue of the namespace (``{ns}.reply.*``) is reached through the
        ``{ns}.replies`` exchange, where it is bound with its own name; the history
        stream is bound there too and keeps a copy, so conversations read back from
        history include replies. Any other name (a foreign client's server-named queue,
        direct reply-to) goes through the default exchange, the AMQP RPC convention,
        with a ``BCC`` of the history stream, on :meth:`default_exchange_channel`.
        Raises as :meth:`send`.
        """
        self.senders.check_sendable(message)
        if wire.is_reply_queue(self.namespace, queue_name):
            out = wire.encode(message, max_body_bytes=self.max_body_bytes)
            exchange = wire.reply_exchange_name(self.namespace)
            props = properties(out, self.user_id)
            await self.publish(exchange, queue_name, out.body, props, message.id)
            return
        out = wire.encode(
            message,
            extra_headers={"BCC": [wire.history_name(self.namespace)]},
            max_body_bytes=self.max_body_bytes,
        )
        channel = await self.default_exchange_channel()
        props = properties(out, self.user_id)
        await self.publish("", queue_name, out.body, props, message.id, via=channel)

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        message_id: str,
        recipient: str | None = None,
        via: AbstractChannel | None = None,
        *,
        traced: bool = True,
    ) -> None:
        """Publish with ``mandatory`` and wait for the broker's confirm; map failures.

        ``traced=False``: a control record (a card, a cancel record, a stream marker),
        not a message of any piece of work: no span, not counted as sent.

        What ``aio_pika.Exchange.publish`` does, on the aiormq channel under the
        publishing channel (or ``via``; a robust channel swaps it after a reconnect, so
        it is looked up per publish): a returned message raises PublishError, a nack
        DeliveryError; :func:`publish_errors` turns them into ours.
        """
        channel = via or self._channel
        hook = (
            instrumentation.publishing(exchange, routing_key, properties)
            if traced
            else contextlib.nullcontext()
        )
        with hook:
            try:
                if channel.is_closed:
                    raise ChannelInvalidStateError(f"{channel!r} closed")
                # Frames written directly (_fast_publish). It waits for the confirm
                # only, not also for the frames to reach the socket: the confirm implies
                # it, and the connection's bounded write queue still holds publishers
                # back when the socket is slow.
                await _fast_publish.publish(
                    await channel.get_underlay_channel(),
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    timeout=self.timeout_s,
                )
            except BaseException:
                # The table is built only for a failure: a publish that succeeds (nearly
                # all of them) pays for neither it nor its closures.
                attempt = PublishAttempt(
                    message_id,
                    exchange,
                    routing_key,
                    recipient,
                    self.timeout_s,
                    self._failure,
                    bool(recipient) and self._nack_means_unavailable(recipient or ""),
                )
                with map_exceptions(publish_errors(attempt)):
                    raise

    async def default_exchange_channel(self) -> AbstractChannel:
        """The channel (confirms on) for answers through the default exchange.

        Its own channel: a user that may not write to ``amq.default`` is refused there
        without the publishing channel, and the sends in flight on it, going down too.
        """
        async with self._default_exchange_lock:
            channel = self._default_exchange_channel
            if channel is None:
                channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                self._default_exchange_channel = channel
            elif channel.is_closed and isinstance(channel, AbstractRobustChannel):
                # The broker closed it (ACCESS_REFUSED); aio-pika is reopening it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._connect_timeout_s):
                        await channel.ready()
            return channel
