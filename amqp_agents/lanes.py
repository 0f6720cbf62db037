"""An agent's consumers on the queues of its inbox, and which held delivery starts next.

A quorum inbox is several lanes (docs/wire-format.md, "Lanes"), each consumed with a
prefetch of its own (:class:`LaneConsumers`), so an agent may hold more deliveries
than it runs handlers. :class:`PrioritySlots` decides which held delivery starts
next: the highest priority, then the earliest. So a message already held is still
overtaken by a more urgent one, as in a classic priority queue; only the
``concurrency`` already running are not. A classic inbox is one "lane".
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractQueue
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from ._delivery_tap import Delivery, FrameSwitch

log = logging.getLogger(__name__)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("handling a delivery failed", exc_info=exc)


HIGHER_LANE_PREFETCH = 4
"""A higher lane prefetches this many times ``concurrency``, so that one of its
messages is at hand whenever a handler slot frees (prefetch is per consumer)."""


class PrioritySlots:
    """At most ``size`` holders at once; waiters get a slot highest priority first.

    >>> slots = PrioritySlots(8)
    >>> async with slots.hold(priority=4): ...  # doctest: +SKIP
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self._free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    def hold(self, priority: int) -> _Held:
        """Wait for a slot (more urgent waiters first), hold it for the block."""
        return _Held(self, priority)

    @property
    def waiting(self) -> int:
        """How many are waiting for a slot."""
        return sum(not future.done() for _, _, future in self._waiting)

    async def _acquire(self, priority: int) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, next(self._arrival), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot was handed over as we were cancelled
            raise

    def _release(self) -> None:
        # Hand the slot straight to the most urgent live waiter, or free it.
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1


class _Held:
    """``async with slots.hold(priority)``: a plain context manager, not a generator
    one (which costs a generator and a wrapper per delivery)."""

    __slots__ = ("_priority", "_slots")

    def __init__(self, slots: PrioritySlots, priority: int) -> None:
        self._slots = slots
        self._priority = priority

    async def __aenter__(self) -> None:
        await self._slots._acquire(self._priority)

    async def __aexit__(self, *exc_info: object) -> None:
        self._slots._release()


class LaneConsumers:
    """One consumer per queue of an inbox (highest priority first) on one channel.

    Args:
        channel: the agent's consuming channel.
        lanes: the inbox's queues, highest priority first.
        concurrency: handlers at once; the lowest lane's prefetch.
        on_delivery: called (in a task of its own) with each delivery.
        on_cancelled: called with a ``basic.cancel`` frame from the broker.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        lanes: Sequence[AbstractQueue],
        concurrency: int,
        on_delivery: Callable[[Delivery], Coroutine[Any, Any, None]],
        on_cancelled: Callable[[Any], None],
    ) -> None:
        self.channel = channel
        self.lanes = list(lanes)
        self.concurrency = concurrency
        self._on_delivery = on_delivery
        self._on_cancelled = on_cancelled
        self._tags: dict[str, str] = {}
        self._switch: FrameSwitch | None = None

    def owns(self, consumer_tag: object) -> bool:
        """Whether ``consumer_tag`` is one of these consumers'."""
        return consumer_tag in self._tags.values()

    async def consume(self) -> None:
        """Start a consumer on each lane on the channel's current link, unless one runs
        there (aio-pika replays only consumers of queues declared on this channel; the
        inbox belongs to the topology channel, so the broker's cancels are watched)."""
        underlay = await self.channel.get_underlay_channel()
        running = getattr(underlay, "consumers", {})  # aiormq.Channel's
        underlay.on_consumer_cancel_callbacks.add(self._on_cancelled)
        switch = self._switch = FrameSwitch.of(underlay)
        for lane in self.lanes:
            if self._tags.get(lane.name) not in running:
                factor = 1 if lane is self.lanes[-1] else HIGHER_LANE_PREFETCH
                await self.channel.set_qos(prefetch_count=self.concurrency * factor)
                tag = f"{lane.name}.{uuid.uuid4().hex}"
                await switch.consume(lane.name, tag, self._start)
                self._tags[lane.name] = tag

    def _start(self, delivery: Delivery) -> None:
        # In the connection reader's turn (_delivery_tap): the handling gets its own task.
        task = asyncio.get_running_loop().create_task(self._on_delivery(delivery))
        task.add_done_callback(_log_failure)

    async def cancel(self) -> None:
        """Cancel every consumer (deliveries in hand stay unacknowledged)."""
        for lane in self.lanes:
            tag = self._tags.pop(lane.name, None)
            if tag is None or self.channel.is_closed:
                continue
            try:
                await lane.cancel(tag)
            except CONNECTION_EXCEPTIONS as exc:
                log.warning("could not cancel the consumer of %s: %r", lane.name, exc)
            if self._switch is not None:
                self._switch.forget(tag)
