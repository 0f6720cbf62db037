"""The in-process broker behind aio-pika: a connection and channels that answer aio-pika
as aiormq would, so aio-pika's own channels, queues, exchanges and messages (and every
module of this library above them) run unchanged on :mod:`amqp_agents.memory.broker`.

Only what aio-pika and this library call is here (declares, binds, deletes, publish
with confirms and returns, consume, get, cancel, qos, ack/nack/reject, close). A
refusal closes the channel with aiormq's exception for its reply code, as RabbitMQ
closes it, so error handling above sees the same exceptions.

:class:`MemoryConnection` is the :class:`~amqp_agents.connection.AgentConnection`
(a robust connection) whose transport is a :class:`MemoryLink` instead of a socket.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
from aio_pika.abc import UnderlayConnection
from aio_pika.message import IncomingMessage
from aio_pika.queue import consumer as _aio_pika_consumer
from aio_pika.tools import OneShotCallback
from aio_pika.tools import create_task as aio_pika_create_task
from aiormq.abc import DeliveredMessage
from aiormq.channel import exception_by_code
from aiormq.exceptions import (
    ChannelInvalidStateError,
    DeliveryError,
    DuplicateConsumerTag,
    PublishError,
)
from pamqp import commands as spec
from pamqp.header import ContentHeader
from yarl import URL

from amqp_agents.broker_url import memory_broker
from amqp_agents.connection import AgentConnection

from .broker import BrokerError, MemoryBroker, named
from .queues import Consumer, Queue, Stored

STREAM_OFFSET = "x-stream-offset"


class MemoryLink:
    """The "socket" of one connection to an in-process broker (aiormq's Connection)."""

    basic_nack = True
    accept_consumer_cancel_ok = False

    def __init__(self, broker: MemoryBroker, user: str | None) -> None:
        self.broker = broker
        self.user = user
        self.closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.channels: dict[int, MemoryChannel] = {}
        self._numbers = itertools.count(1)

    @property
    def is_closed(self) -> bool:
        return self.closing.done()

    async def ready(self) -> None:
        return None

    async def channel(
        self,
        channel_number: int | None = None,
        publisher_confirms: bool = True,
        on_return_raises: bool = False,
        timeout: Any = None,
        **_: Any,
    ) -> MemoryChannel:
        if self.is_closed:
            raise ChannelInvalidStateError("connection closed")
        number = channel_number or next(self._numbers)
        channel = MemoryChannel(self, number, publisher_confirms, on_return_raises)
        self.channels[number] = channel
        return channel

    async def close(self, exc: Any = None) -> None:
        if self.is_closed:
            return
        for channel in list(self.channels.values()):
            channel.shut(None)
        self.broker.link_closed(self)
        self.closing.set_result(None)


class MemoryChannel:
    """One channel on a :class:`MemoryLink` (aiormq's Channel, as aio-pika uses it)."""

    def __init__(
        self, link: MemoryLink, number: int, publisher_confirms: bool, on_return_raises: bool
    ) -> None:
        self.connection = link
        self.broker = link.broker
        self.number = number
        self.publisher_confirms = publisher_confirms
        self.on_return_raises = on_return_raises
        self.closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.consumers: dict[str, Callable[[DeliveredMessage], Any]] = {}
        self.on_return_callbacks: set[Callable[[DeliveredMessage], Any]] = set()
        self.on_consumer_cancel_callbacks: set[Callable[[Any], Any]] = set()
        self.prefetch_count = 0
        self._tags = itertools.count(1)
        self._unacked: dict[int, tuple[Queue, Stored, Consumer | None]] = {}
        self._consumers: dict[str, Consumer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<MemoryChannel #{self.number} of memory://{self.broker.name}>"

    @property
    def is_closed(self) -> bool:
        return self.closing.done()

    # -- closing ----------------------------------------------------------------------

    def shut(self, exc: BaseException | None) -> None:
        """Close: requeue what is unacknowledged, drop the consumers."""
        if self.is_closed:
            return
        for consumer in list(self._consumers.values()):
            consumer.queue.remove_consumer(consumer)
        self._consumers.clear()
        self.consumers.clear()
        unacked, self._unacked = self._unacked, {}
        for queue, stored, _ in unacked.values():
            queue.requeue(stored)
        self.connection.channels.pop(self.number, None)
        if exc is None:
            self.closing.set_result(None)
        else:
            self.closing.set_exception(exc)
            self.closing.exception()  # retrieved: aio-pika reads it from its callback

    async def close(self, exc: Any = None) -> None:
        self.shut(None)

    def _check_open(self) -> None:
        if self.is_closed:
            raise ChannelInvalidStateError(f"{self!r} closed")

    def _refused(self, error: BrokerError) -> BaseException:
        """Close the channel as RabbitMQ does for a refusal; the exception to raise."""
        exc = exception_by_code(spec.Channel.Close(reply_code=error.code, reply_text=error.text))
        self.shut(exc)
        return exc

    # -- declaring --------------------------------------------------------------------

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: str = "direct",
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        nowait: bool = False,
        arguments: Any = None,
        timeout: Any = None,
    ) -> spec.Exchange.DeclareOk:
        self._check_open()
        try:
            kind = getattr(exchange_type, "value", exchange_type)
            self.broker.declare_exchange(exchange, str(kind), durable=durable, passive=passive)
        except BrokerError as error:
            raise self._refused(error) from None
        return spec.Exchange.DeclareOk()

    async def exchange_delete(
        self, exchange: str = "", if_unused: bool = False, nowait: bool = False, **_: Any
    ) -> spec.Exchange.DeleteOk:
        self._check_open()
        self.broker.delete_exchange(exchange)
        return spec.Exchange.DeleteOk()

    async def queue_declare(
        self,
        queue: str = "",
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        nowait: bool = False,
        arguments: Any = None,
        timeout: Any = None,
    ) -> spec.Queue.DeclareOk:
        self._check_open()
        try:
            declared = self.broker.declare_queue(
                self.connection,
                queue or "",
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                passive=passive,
                arguments=arguments,
            )
        except BrokerError as error:
            raise self._refused(error) from None
        return spec.Queue.DeclareOk(
            queue=declared.name,
            message_count=declared.message_count,
            consumer_count=len(declared.consumers),
        )

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        nowait: bool = False,
        arguments: Any = None,
        timeout: Any = None,
    ) -> spec.Queue.BindOk:
        self._check_open()
        try:
            self.broker.bind(queue, exchange, routing_key)
        except BrokerError as error:
            raise self._refused(error) from None
        return spec.Queue.BindOk()

    async def queue_unbind(
        self,
        queue: str = "",
        exchange: str = "",
        routing_key: str = "",
        arguments: Any = None,
        timeout: Any = None,
    ) -> spec.Queue.UnbindOk:
        self._check_open()
        self.broker.unbind(queue, exchange, routing_key)
        return spec.Queue.UnbindOk()

    async def queue_delete(
        self, queue: str = "", if_unused: bool = False, if_empty: bool = False, **_: Any
    ) -> spec.Queue.DeleteOk:
        self._check_open()
        return spec.Queue.DeleteOk(message_count=self.broker.delete_queue(queue))

    async def queue_purge(self, queue: str = "", **_: Any) -> spec.Queue.PurgeOk:
        self._check_open()
        try:
            return spec.Queue.PurgeOk(message_count=self.broker.purge(queue))
        except BrokerError as error:
            raise self._refused(error) from None

    async def confirm_delivery(self, nowait: bool = False, timeout: Any = None) -> None:
        self.publisher_confirms = True

    async def basic_qos(
        self,
        prefetch_size: int | None = None,
        prefetch_count: int | None = None,
        global_: bool = False,
        timeout: Any = None,
    ) -> spec.Basic.QosOk:
        self._check_open()
        self.prefetch_count = prefetch_count or 0
        return spec.Basic.QosOk()

    # -- publishing -------------------------------------------------------------------

    async def basic_publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: spec.Basic.Properties | None = None,
        mandatory: bool = False,
        immediate: bool = False,
        timeout: Any = None,
        wait: bool = True,
    ) -> Any:
        self._check_open()
        properties = _as_on_the_wire(properties or spec.Basic.Properties(delivery_mode=1))
        if not properties.message_id:
            properties.message_id = uuid.uuid4().hex
        try:
            routed, refused = self.broker.publish(
                exchange=exchange,
                routing_key=routing_key,
                body=body,
                properties=properties,
                user=self.connection.user,
            )
        except BrokerError as error:
            raise self._refused(error) from None
        await asyncio.sleep(0)  # a publish is never instant on a broker either
        if not routed and mandatory:
            frame = spec.Basic.Return(
                reply_code=312, reply_text="NO_ROUTE", exchange=exchange, routing_key=routing_key
            )
            returned = DeliveredMessage(
                delivery=frame,
                header=ContentHeader(properties=properties, body_size=len(body)),
                body=body,
                channel=self,  # type: ignore[arg-type]
            )
            if self.on_return_raises:
                raise PublishError(returned, frame)
            for callback in list(self.on_return_callbacks):
                callback(returned)
            return returned if self.publisher_confirms else None
        if not self.publisher_confirms:
            return None
        if refused:
            raise DeliveryError(None, spec.Basic.Nack(delivery_tag=0))
        return spec.Basic.Ack(delivery_tag=0)

    # -- consuming --------------------------------------------------------------------

    async def basic_consume(
        self,
        queue: str,
        consumer_callback: Callable[[DeliveredMessage], Any],
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Any = None,
        consumer_tag: str | None = None,
        timeout: Any = None,
    ) -> spec.Basic.ConsumeOk:
        self._check_open()
        tag = consumer_tag or f"ctag{self.number}.{uuid.uuid4().hex}"
        if tag in self.consumers:
            raise DuplicateConsumerTag(self.number)
        try:
            target = self._consumable(queue)
            consumer = Consumer(self, target, tag, consumer_callback, no_ack, self.prefetch_count)
            if target.is_stream:
                if not self.prefetch_count:
                    raise BrokerError(
                        406,
                        f"PRECONDITION_FAILED - consumer prefetch count is not set for '{queue}'",
                    )
                consumer.position = _stream_start(target, (arguments or {}).get(STREAM_OFFSET))
        except BrokerError as error:
            raise self._refused(error) from None
        self.consumers[tag] = consumer_callback
        self._consumers[tag] = consumer
        target.consumers.append(consumer)
        target.had_consumer = True
        target.schedule()
        return spec.Basic.ConsumeOk(consumer_tag=tag)

    def _consumable(self, name: str) -> Queue:
        queue = self.broker.queues.get(name)
        if queue is None:
            raise BrokerError(404, f"NOT_FOUND - no queue '{name}' in vhost '/'")
        if queue.owner is not None and queue.owner is not self.connection:
            raise BrokerError(
                405, f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}'"
            )
        return queue

    async def basic_cancel(
        self, consumer_tag: str, *, nowait: bool = False, timeout: Any = None
    ) -> spec.Basic.CancelOk | None:
        self._check_open()
        self.consumers.pop(consumer_tag, None)
        consumer = self._consumers.pop(consumer_tag, None)
        if consumer is not None:
            consumer.queue.remove_consumer(consumer)
        return None if nowait else spec.Basic.CancelOk(consumer_tag=consumer_tag)

    def cancelled_by_broker(self, consumer: Consumer) -> None:
        """The consumer's queue was deleted: tell the channel (``basic.cancel``)."""
        self.consumers.pop(consumer.tag, None)
        self._consumers.pop(consumer.tag, None)
        frame = spec.Basic.Cancel(consumer_tag=consumer.tag, nowait=True)
        loop = asyncio.get_running_loop()
        for callback in list(self.on_consumer_cancel_callbacks):
            result = callback(frame)
            if asyncio.iscoroutine(result):
                self._track(loop.create_task(result))

    async def basic_get(
        self, queue: str = "", no_ack: bool = False, timeout: Any = None
    ) -> DeliveredMessage:
        self._check_open()
        try:
            target = self._consumable(queue)
        except BrokerError as error:
            raise self._refused(error) from None
        stored = None if target.is_stream else target.take()
        if stored is None:
            return DeliveredMessage(
                delivery=spec.Basic.GetEmpty(),
                header=ContentHeader(),
                body=b"",
                channel=self,  # type: ignore[arg-type]
            )
        tag = next(self._tags)
        if not no_ack:
            self._unacked[tag] = (target, stored, None)
        frame = spec.Basic.GetOk(
            delivery_tag=tag,
            redelivered=stored.redelivered,
            exchange=stored.exchange,
            routing_key=stored.routing_key,
            message_count=target.message_count,
        )
        return _delivered(frame, stored, self)

    def deliver(self, consumer: Consumer, stored: Stored, *, offset: int | None = None) -> None:
        """Hand ``stored`` to ``consumer`` (the broker's dispatch calls this)."""
        tag = next(self._tags)
        if offset is not None:  # a stream entry: a copy carrying its offset
            headers = dict(stored.properties.headers or {})
            headers[STREAM_OFFSET] = offset
            properties = _copy(stored.properties, headers)
        else:
            properties = _copy(stored.properties, None)
        if not consumer.no_ack:
            consumer.in_flight += 1
            self._unacked[tag] = (consumer.queue, stored, consumer)
        frame = spec.Basic.Deliver(
            consumer_tag=consumer.tag,
            delivery_tag=tag,
            redelivered=stored.redelivered,
            exchange=stored.exchange,
            routing_key=stored.routing_key,
        )
        message = DeliveredMessage(
            delivery=frame,
            header=ContentHeader(properties=properties, body_size=len(stored.body)),
            body=stored.body,
            channel=self,  # type: ignore[arg-type]
        )
        callback = consumer.callback
        if type(callback) is functools.partial and callback.func is _aio_pika_consumer:
            # aio-pika's own consumer callback: it only builds the IncomingMessage and
            # starts the user's callback in a task; do that here, skipping the task
            # aiormq would run it in (one task per delivery instead of two).
            incoming = incoming_message(message, callback.keywords["no_ack"])
            started = aio_pika_create_task(callback.args[0], incoming)
            if isinstance(started, asyncio.Task):
                self._track(started)
            return
        self._track(asyncio.get_running_loop().create_task(callback(message)))

    def _track(self, task: asyncio.Task[Any]) -> None:
        # Held until done (the loop keeps only weak references), as aiormq holds its own.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- acknowledging ----------------------------------------------------------------

    def _settle(self, delivery_tag: int, multiple: bool) -> list[tuple[Queue, Stored]]:
        if self.is_closed:
            raise ChannelInvalidStateError(f"{self!r} closed")
        tags = [t for t in self._unacked if t <= delivery_tag] if multiple else [delivery_tag]
        if not multiple and delivery_tag not in self._unacked:
            error = BrokerError(406, f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
            raise self._refused(error)
        settled = []
        for tag in tags:
            queue, stored, consumer = self._unacked.pop(tag)
            if consumer is not None:
                consumer.in_flight -= 1
                queue.schedule()
            settled.append((queue, stored))
        return settled

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        self._settle(delivery_tag, multiple)

    async def basic_nack(
        self,
        delivery_tag: int,
        multiple: bool = False,
        requeue: bool = True,
        wait: bool = True,
    ) -> None:
        for queue, stored in self._settle(delivery_tag, multiple):
            self._return(queue, stored, requeue)

    async def basic_reject(
        self, delivery_tag: int, *, requeue: bool = True, wait: bool = True
    ) -> None:
        for queue, stored in self._settle(delivery_tag, False):
            self._return(queue, stored, requeue)

    def _return(self, queue: Queue, stored: Stored, requeue: bool) -> None:
        if queue.is_stream:
            return
        if requeue:
            queue.requeue(stored)
        else:
            self.broker.dead_letter(queue, stored, "rejected")


class _Building(IncomingMessage):
    """An IncomingMessage under construction: aio-pika's own ``__init__`` runs on it
    without its per-attribute lock check (26 calls of a property per message, about
    four fifths of the object's cost), which cannot fire there: the message is
    unlocked until that ``__init__``'s last line. Then it becomes an IncomingMessage."""

    __slots__ = ()
    __setattr__ = object.__setattr__  # type: ignore[assignment]


def incoming_message(delivered: DeliveredMessage, no_ack: bool) -> IncomingMessage:
    """``IncomingMessage(delivered, no_ack=no_ack)``, the same object, built faster."""
    message = object.__new__(_Building)
    IncomingMessage.__init__(message, delivered, no_ack=no_ack)
    message.__class__ = IncomingMessage  # type: ignore[assignment]
    return message


def _stream_start(queue: Queue, offset: Any) -> int:
    """The first offset a stream consumer reads (``x-stream-offset``; default ``next``)."""
    if offset is None or offset == "next":
        return len(queue.log)
    if offset == "first":
        return 0
    if offset == "last":
        return max(len(queue.log) - 1, 0)
    if isinstance(offset, bool):
        raise BrokerError(406, "PRECONDITION_FAILED - invalid x-stream-offset")
    if isinstance(offset, int):
        return min(max(offset, 0), len(queue.log))
    stamp = getattr(offset, "timestamp", None)
    if callable(stamp):
        # RabbitMQ resolves a timestamp to whole seconds, then a chunk's first entry.
        since = int(stamp())
        for index, entry in enumerate(queue.log):
            if entry.timestamp_s >= since:
                return index
        return len(queue.log)
    raise BrokerError(406, f"PRECONDITION_FAILED - invalid x-stream-offset {offset!r}")


def _as_on_the_wire(properties: spec.Basic.Properties) -> spec.Basic.Properties:
    """The properties as a consumer on RabbitMQ would decode them (through pamqp).

    Values that come back from pamqp unchanged (text, integers, lists and tables of
    them...) are kept as they are; a timestamp loses its fraction of a second, as on
    the wire; anything else goes through pamqp's encoder and decoder.
    """
    stamp = properties.timestamp
    headers = properties.headers
    if (headers is None or _plain_table(headers)) and (stamp is None or _plain_time(stamp)):
        copy = _copy(properties, headers)
        if stamp is not None:
            copy.timestamp = stamp.replace(microsecond=0, tzinfo=UTC)
        return copy
    decoded = ContentHeader()
    decoded.unmarshal(ContentHeader(properties=properties).marshal())
    wire_properties: spec.Basic.Properties = decoded.properties
    return wire_properties


def _plain_time(value: Any) -> bool:
    return type(value) is datetime and (value.tzinfo is None or bool(value.utcoffset() == _ZERO))


_ZERO = timedelta(0)
_INT_RANGE = range(-(2**63), 2**63)


def _plain_table(table: Any) -> bool:
    """Whether a header table decodes to itself: the common case (flat text and
    integers) is checked inline, anything else by :func:`_unchanged_on_the_wire`."""
    if type(table) is not dict:
        return False
    for key, value in table.items():
        kind = type(value)
        if type(key) is not str or len(key) > 128:
            return False
        if kind is str:
            if len(value) >= 65536:
                return False
        elif kind is int:
            if value not in _INT_RANGE:
                return False
        elif not _unchanged_on_the_wire(value):
            return False
    return True


def _unchanged_on_the_wire(value: Any, depth: int = 0) -> bool:
    kind = type(value)
    if kind in (str, bool, float, bytes) or value is None:
        return kind is not str or len(value) < 65536
    if kind is int:
        return value in _INT_RANGE
    if depth > 8:
        return False
    if kind is list:
        return all(_unchanged_on_the_wire(item, depth + 1) for item in value)
    if kind is dict:
        return all(
            type(key) is str and len(key) <= 128 and _unchanged_on_the_wire(item, depth + 1)
            for key, item in value.items()
        )
    return False


def _copy(properties: spec.Basic.Properties, headers: Any) -> spec.Basic.Properties:
    """A copy of ``properties`` with ``headers`` (None: a copy of the original's)."""
    copy: spec.Basic.Properties = _new_properties(spec.Basic.Properties)
    copy.content_type = properties.content_type
    copy.content_encoding = properties.content_encoding
    if headers is None:
        original = properties.headers
        headers = None if original is None else dict(original)
    copy.headers = headers
    copy.delivery_mode = properties.delivery_mode
    copy.priority = properties.priority
    copy.correlation_id = properties.correlation_id
    copy.reply_to = properties.reply_to
    copy.expiration = properties.expiration
    copy.message_id = properties.message_id
    copy.timestamp = properties.timestamp
    copy.message_type = properties.message_type
    copy.user_id = properties.user_id
    copy.app_id = properties.app_id
    copy.cluster_id = properties.cluster_id
    return copy


_new_properties = object.__new__


def _delivered(frame: Any, stored: Stored, channel: MemoryChannel) -> DeliveredMessage:
    return DeliveredMessage(
        delivery=frame,
        header=ContentHeader(properties=_copy(stored.properties, None), body_size=len(stored.body)),
        body=stored.body,
        channel=channel,  # type: ignore[arg-type]
    )


def _open_link(connection: aio_pika.Connection, broker: str, user: str | None) -> None:
    link = MemoryLink(named(broker), user)
    on_close = OneShotCallback(connection._on_connection_close)
    link.closing.add_done_callback(on_close)
    connection.transport = UnderlayConnection(connection=link, close_callback=on_close)  # type: ignore[arg-type]


class PlainMemoryConnection(aio_pika.Connection):
    """A plain (not robust) aio-pika connection to an in-process broker, as
    ``aio_pika.connect`` gives for ``amqp://``: for playing a foreign client."""

    def __init__(self, url: str) -> None:
        where = memory_broker(url)
        if where is None:
            raise ValueError(f"not a memory:// URL: {url!r}")
        super().__init__(URL(url))
        self.broker_name, self.user = where[0], where[1] or "guest"

    async def connect(self, timeout: Any = None) -> None:
        _open_link(self, self.broker_name, self.user)
        await self._on_connected()


class MemoryConnection(AgentConnection):
    """An :class:`AgentConnection` to the in-process broker named in ``memory://NAME``.

    The user is the URL's user name (``memory://researcher@NAME``), else ``guest``, as
    for ``amqp://``: every message published carries it as ``user_id``.
    """

    def __init__(self, url: Any, *, broker: str, user: str | None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.broker_name = broker
        self.user = user

    async def _RobustConnection__connect_transport(self) -> None:
        # aio-pika's reconnect loop calls this to open a link; here it cannot fail.
        self.transport = None
        self.connected.clear()
        _open_link(self, self.broker_name, self.user)
        await self._on_connected()
        fail_fast = self._RobustConnection__fail_fast_future  # type: ignore[attr-defined]
        if not fail_fast.done():
            fail_fast.set_result(None)
