"""A channel's deliveries and confirms handled straight from the connection's reader.

aiormq passes every frame of a channel through an ``asyncio.Queue`` to the channel's
own reader task, which assembles a delivery from its three frames (method, content
header, body) and then starts one task per delivery to run the consumer callback;
aio-pika's consumer then builds an ``IncomingMessage`` (it converts every property,
about 35 us) and starts a second task. For an agent that is most of what receiving a
message costs on top of handling it; for a history scan or the indexer, which read
hundreds of thousands of stream entries in a row, it was about half of the client's
CPU (docs/history.md).

A :class:`FrameSwitch` takes the place of a channel's frame queue. The connection's
reader gives it each frame of the channel; it assembles the deliveries of the
consumers registered with it and calls each one's callback with a :class:`Delivery`,
in order, in the reader's own turn: no queue hand-over, no task, no wrapper. A
publisher confirm is settled in the same turn when nothing is queued before it (a
``basic.return`` still queued must be seen first: it turns the confirm into an
error). Every other frame (consume-ok, cancel, close, a delivery to an unregistered
consumer with its content) goes on to the channel's queue as before, so the channel
works as usual. The switch stays on the channel until the channel closes (taking it
off between a delivery's frames would hand a lone content frame to the channel's RPC
queue).

A callback runs inside the connection's reader: it must not block. An agent's starts
a task for the delivery; the stream readers (:class:`DeliveryTap`) do their work in
place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiormq
import aiormq.abc
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

log = logging.getLogger(__name__)


class Delivery:
    """One delivery as the switch assembled it.

    It reads like aiormq's ``DeliveredMessage`` (``delivery_tag``, ``routing_key``,
    ``header.properties``, ``body``) and like aio-pika's ``IncomingMessage`` (the
    properties by name, ``ack``/``nack``/``reject``), so the code that handles one
    handles the others; the properties are read from the content header when asked,
    not converted up front.
    """

    __slots__ = (
        "body",
        "channel",
        "delivery_tag",
        "exchange",
        "header",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        channel: aiormq.abc.AbstractChannel,
        deliver: commands.Basic.Deliver,
        header: ContentHeader,
        body: bytes,
    ) -> None:
        self.channel = channel
        self.delivery_tag: int = deliver.delivery_tag or 0
        self.exchange = deliver.exchange
        self.redelivered = bool(deliver.redelivered)
        self.header = header
        self.body = body
        self.routing_key: str | None = deliver.routing_key

    @property
    def headers(self) -> dict[str, Any]:
        return self.header.properties.headers or {}

    @property
    def content_type(self) -> str | None:
        return self.header.properties.content_type

    @property
    def message_id(self) -> str | None:
        return self.header.properties.message_id

    @property
    def correlation_id(self) -> str | None:
        return self.header.properties.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self.header.properties.reply_to

    @property
    def type(self) -> str | None:
        return self.header.properties.message_type

    @property
    def priority(self) -> int:
        """0 when the message has none, as aio-pika (and RabbitMQ's queues) read it; a
        dead letter or retry copy carries it on so (docs/wire-format.md)."""
        return self.header.properties.priority or 0

    @property
    def timestamp(self) -> datetime | None:
        return self.header.properties.timestamp

    @property
    def user_id(self) -> str | None:
        return self.header.properties.user_id

    @property
    def expiration(self) -> float | None:
        """In seconds, as aio-pika decodes it (the property is milliseconds, as text)."""
        value = self.header.properties.expiration
        if not value:
            return None
        try:
            return float(value) / 1000
        except ValueError:
            return None

    async def ack(self, multiple: bool = False) -> None:
        """Acknowledge it once the frame is on its way to the broker."""
        await self.channel.basic_ack(self.delivery_tag, multiple=multiple)

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        """Give it back (``requeue``) or drop it to the queue's dead-letter exchange."""
        await self.channel.basic_nack(self.delivery_tag, multiple=multiple, requeue=requeue)

    async def reject(self, requeue: bool = False) -> None:
        """Refuse it (``requeue`` puts it back)."""
        await self.channel.basic_reject(self.delivery_tag, requeue=requeue)


def deliver_frame(
    consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str
) -> commands.Basic.Deliver:
    """A ``basic.deliver`` as pamqp's decoder makes it: attributes set, not validated
    (a name the broker delivers is taken as it is; pamqp's constructor refuses some,
    e.g. an exchange name with characters outside its pattern)."""
    deliver = commands.Basic.Deliver.__new__(commands.Basic.Deliver)
    deliver.consumer_tag = consumer_tag
    deliver.delivery_tag = delivery_tag
    deliver.redelivered = redelivered
    deliver.exchange = exchange
    deliver.routing_key = routing_key
    return deliver


DeliveryCallback = Callable[[Delivery], Awaitable[None] | None]
"""Called in the connection reader's turn; an awaitable it returns is awaited there."""


class FrameSwitch:
    """A channel's frame queue that handles registered consumers' deliveries and
    publisher confirms itself (module docstring). Get it with :meth:`of`."""

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        self.consumers: dict[str, DeliveryCallback] = {}
        frames = getattr(channel, "frames", None)
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue() if frames is None else frames
        self._installed = frames is not None
        self._deliver: commands.Basic.Deliver | None = None
        self._callback: DeliveryCallback | None = None
        self._header: ContentHeader | None = None
        self._size = 0
        self._parts: list[bytes] = []
        if self._installed:
            channel.frames = self  # type: ignore[assignment]

    @classmethod
    def of(cls, channel: aiormq.abc.AbstractChannel) -> FrameSwitch:
        """The channel's switch, installed on first use."""
        frames = getattr(channel, "frames", None)
        if isinstance(frames, FrameSwitch):
            return frames
        return cls(channel)

    async def consume(
        self,
        queue: str,
        consumer_tag: str,
        callback: DeliveryCallback,
        *,
        no_ack: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Start a consumer whose deliveries go to ``callback``; they may arrive before
        this returns (the tag is chosen by the caller for that reason)."""
        self.register(consumer_tag, callback)
        channel = self.channel

        async def fallback(delivered: aiormq.abc.DeliveredMessage) -> None:
            # Only where the switch could not take the channel's frames (the memory
            # broker's channel has no frame queue): aiormq's own path, then ours.
            deliver = deliver_frame(
                consumer_tag,
                delivered.delivery_tag or 0,
                bool(delivered.redelivered),
                delivered.exchange or "",
                delivered.routing_key or "",
            )
            result = callback(Delivery(channel, deliver, delivered.header, delivered.body))
            if result is not None:
                await result

        try:
            await channel.basic_consume(
                queue, fallback, no_ack=no_ack, arguments=arguments, consumer_tag=consumer_tag
            )
        except BaseException:
            self.consumers.pop(consumer_tag, None)
            raise

    def register(self, consumer_tag: str, callback: DeliveryCallback) -> None:
        """Send ``consumer_tag``'s deliveries to ``callback`` from now on."""
        self.consumers[consumer_tag] = callback

    def forget(self, consumer_tag: str) -> None:
        """Stop handling ``consumer_tag``'s deliveries here (after its cancel)."""
        self.consumers.pop(consumer_tag, None)

    # The queue's interface, as the connection's and the channel's readers use it.

    async def put(self, item: tuple[int, Any]) -> None:
        frame = item[1]
        if self._deliver is None:
            if isinstance(frame, commands.Basic.Deliver):
                callback = self.consumers.get(frame.consumer_tag or "")
                if callback is not None:
                    self._deliver, self._callback = frame, callback
                    return
            elif isinstance(frame, commands.Basic.Ack | commands.Basic.Nack) and (
                self._installed and self._queue.empty()
            ):
                self._confirm(frame)
                return
            await self._queue.put(item)
            return
        if isinstance(frame, ContentHeader):
            self._header = frame
            self._size = frame.body_size
            self._parts = []
        elif isinstance(frame, ContentBody):
            self._parts.append(frame.value)
            self._size -= len(frame.value)
        else:  # the broker broke the content sequence: let the channel judge it
            self._deliver = None
            await self._queue.put(item)
            return
        if self._size > 0 or self._header is None:
            return
        deliver, self._deliver = self._deliver, None
        header, self._header = self._header, None
        parts, self._parts = self._parts, []
        callback, self._callback = self._callback, None
        assert callback is not None
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            result = callback(Delivery(self.channel, deliver, header, body))
            if result is not None:
                await result
        except Exception:
            # Never into the connection's reader, which would close the connection.
            log.exception("consumer %s failed on delivery %s", deliver.consumer_tag, deliver)

    def _confirm(self, frame: commands.Basic.Ack | commands.Basic.Nack) -> None:
        """What aiormq's channel reader does with a confirm, without the hand-over."""
        channel: Any = self.channel
        tag = frame.delivery_tag
        if not frame.multiple:
            channel._confirm_delivery(tag, frame)
            return
        for pending in [t for t in channel.confirmations if t <= tag]:
            channel._confirm_delivery(pending, frame)

    async def get(self) -> tuple[int, Any]:
        return await self._queue.get()

    def get_nowait(self) -> tuple[int, Any]:
        return self._queue.get_nowait()

    def task_done(self) -> None:
        self._queue.task_done()

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()


ErrorCallback = Callable[[BaseException], None]


class DeliveryTap:
    """Feeds the deliveries of one stream consumer to a synchronous ``on_delivery``,
    with acknowledgements in batches.

    Args:
        channel: the aiormq channel (its :class:`FrameSwitch` is installed at once).
        consumer_tag: the tag :meth:`consume` gives the consumer.
        on_delivery: called with each delivery, in order. It must not block; to
            acknowledge, it calls :meth:`ack_through`.
        on_error: called once with what ``on_delivery`` raised; the tap then drops
            the consumer's further deliveries.
    """

    def __init__(
        self,
        channel: aiormq.abc.AbstractChannel,
        consumer_tag: str,
        on_delivery: Callable[[Delivery], None],
        on_error: ErrorCallback,
    ) -> None:
        self.channel = channel
        self.consumer_tag = consumer_tag
        self.on_delivery = on_delivery
        self.on_error = on_error
        self.failed = False
        self._ack_tag = 0
        self._switch = FrameSwitch.of(channel)
        self._switch.register(consumer_tag, self.deliver)

    async def consume(self, queue: str, arguments: dict[str, Any] | None = None) -> None:
        """Start the consumer; its deliveries may reach ``on_delivery`` before this returns."""
        await self._switch.consume(queue, self.consumer_tag, self.deliver, arguments=arguments)

    def ack_through(self, delivery_tag: int) -> None:
        """Acknowledge every delivery up to ``delivery_tag`` (one ``multiple`` ack), sent
        once the current callback returns."""
        self._ack_tag = delivery_tag

    async def deliver(self, delivery: Delivery) -> None:
        """Call ``on_delivery``, then send the acknowledgement it asked for."""
        if self.failed:
            return
        try:
            self.on_delivery(delivery)
        except Exception as exc:
            self.failed = True
            self.on_error(exc)
            return
        if self._ack_tag:
            tag, self._ack_tag = self._ack_tag, 0
            if not self.channel.is_closed:
                with contextlib.suppress(aiormq.exceptions.AMQPError):  # closing: no matter
                    await self.channel.basic_ack(tag, multiple=True, wait=False)
