"""A consumer's deliveries handed to a plain function, straight from the connection.

aiormq passes every frame of a channel through an ``asyncio.Queue`` to the channel's
own reader task, which assembles a delivery from its three frames (method, content
header, body) and then starts one task per delivery to run the consumer callback. For
a history scan or the indexer, which read hundreds of thousands of stream entries in
a row, those three hand-overs (each a task switch) and the task per entry were about
half of the client's CPU (docs/history.md).

A :class:`DeliveryTap` takes the place of the channel's frame queue. The connection's
reader gives it each frame of the channel; it assembles the deliveries of its one
consumer itself and calls a synchronous function with each, in order, in the reader's
own turn: no queue, no task. Every other frame (consume-ok, confirms, cancel, close, a
delivery to another consumer with its content) goes on to the channel's queue as
before, so the channel works as usual.

Only for a channel that reads one long stream: a slow callback holds up the whole
connection's reader. The tap stays on the channel until the channel closes (taking it
off between a delivery's frames would hand a lone content frame to the channel's RPC
queue).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiormq
import aiormq.abc
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader


class Delivery:
    """One delivery as the tap assembled it. It reads like aiormq's ``DeliveredMessage``
    (``delivery_tag``, ``routing_key``, ``header.properties``, ``body``), so code that
    handles one handles the other, without a channel reference or a wrapper object."""

    __slots__ = ("body", "delivery_tag", "header", "routing_key")

    def __init__(
        self, delivery_tag: int, routing_key: str | None, header: ContentHeader, body: bytes
    ) -> None:
        self.delivery_tag = delivery_tag
        self.routing_key = routing_key
        self.header = header
        self.body = body


DeliveryCallback = Callable[[Delivery], None]
ErrorCallback = Callable[[BaseException], None]


class DeliveryTap:
    """Feeds the deliveries of ``consumer_tag`` on ``channel`` to ``on_delivery``.

    Args:
        channel: the aiormq channel; the tap replaces its frame queue at once. (A
            channel without one, the memory broker's, gets an ordinary consumer
            callback that calls the tap.)
        consumer_tag: the tag :meth:`consume` gives the consumer whose deliveries it
            takes (chosen here: deliveries can arrive before consume-ok is read).
        on_delivery: called with each delivery, in order. It must not block; to
            acknowledge, it calls :meth:`ack_through`.
        on_error: called once with what ``on_delivery`` raised; the tap then drops
            the consumer's further deliveries (an exception must not reach the
            connection's reader, which would close the whole connection).
    """

    def __init__(
        self,
        channel: aiormq.abc.AbstractChannel,
        consumer_tag: str,
        on_delivery: DeliveryCallback,
        on_error: ErrorCallback,
    ) -> None:
        self.channel = channel
        self.consumer_tag = consumer_tag
        self.on_delivery = on_delivery
        self.on_error = on_error
        self.failed = False
        frames = getattr(channel, "frames", None)  # the memory broker's channel has none
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue() if frames is None else frames
        self._deliver: commands.Basic.Deliver | None = None
        self._header: ContentHeader | None = None
        self._size = 0
        self._parts: list[bytes] = []
        self._ack_tag = 0
        if frames is not None:
            channel.frames = self  # type: ignore[assignment]

    async def consume(self, queue: str, arguments: dict[str, Any] | None = None) -> None:
        """Start the consumer; its deliveries may reach ``on_delivery`` before this returns."""

        async def callback(delivered: aiormq.abc.DeliveredMessage) -> None:
            # Only where the tap could not take the channel's frames (the memory broker).
            await self.deliver(
                Delivery(
                    delivered.delivery_tag or 0,
                    delivered.routing_key,
                    delivered.header,
                    delivered.body,
                )
            )

        await self.channel.basic_consume(
            queue, callback, arguments=arguments, consumer_tag=self.consumer_tag
        )

    def ack_through(self, delivery_tag: int) -> None:
        """Acknowledge every delivery up to ``delivery_tag`` (one ``multiple`` ack), sent
        once the current callback returns."""
        self._ack_tag = delivery_tag

    # The queue's interface, as the connection's and the channel's readers use it.

    async def put(self, item: tuple[int, Any]) -> None:
        frame = item[1]
        if self._deliver is None:
            if (
                isinstance(frame, commands.Basic.Deliver)
                and frame.consumer_tag == self.consumer_tag
            ):
                self._deliver = frame
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
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        await self.deliver(Delivery(deliver.delivery_tag or 0, deliver.routing_key, header, body))

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
