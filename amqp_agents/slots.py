"""Handler slots that go to the most urgent waiting delivery first.

A quorum inbox is several lanes, each a consumer with its own prefetch, so an agent
may hold more deliveries than it runs handlers. :class:`PrioritySlots` decides which
held delivery starts next: the highest priority, then the earliest. So a message
already held is still overtaken by a more urgent one, as in a classic priority
queue; only the ``concurrency`` already running are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator


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

    @contextlib.asynccontextmanager
    async def hold(self, priority: int) -> AsyncIterator[None]:
        """Wait for a slot (more urgent waiters first), hold it for the block."""
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

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
