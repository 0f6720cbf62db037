"""Reading a control stream (cancel records, agent cards) from a start, then live.

The broker keeps such records, not a process: a reader that starts (an agent after a
restart, ``amqp-agents agents``) reads the stream from its first retained entry (the
cancels: from the oldest record that can still matter) and rebuilds what it needs. As
with history (:mod:`amqp_agents.history`), an AMQP stream consumer is never told it
reached the end, so the reader appends a marker (``x-stream-marker``, through the
stream's own exchange) and has caught up once it reads it back. Every reader skips
markers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from aio_pika import DeliveryMode
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from pamqp.commands import Basic

from . import wire
from .inbound import Inbound
from .publish import Publisher

log = logging.getLogger(__name__)

Record = Callable[[Inbound], None]
"""Called with each entry that is not a marker, in stream order."""

PREFETCH = 500
"""Stream entries in flight to the reader (a stream consumer needs a prefetch)."""


class StreamReader:
    """Consumes ``stream`` from ``start`` (default: its first entry) on ``channel``.

    Args:
        channel: a channel of its own (closed by :meth:`close`).
        publisher: publishes the marker, through ``exchange``.
        stream: the stream's name.
        exchange: the fanout exchange feeding it.
        on_record: called with each entry but markers.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        publisher: Publisher,
        stream: str,
        exchange: str,
        on_record: Record,
    ) -> None:
        self._channel = channel
        self._publisher = publisher
        self.stream = stream
        self._exchange = exchange
        self._on_record = on_record
        self._marker = str(uuid.uuid4())
        self._caught_up = asyncio.Event()
        self.entries = 0
        """Entries read so far, markers excluded (what a start's replay cost)."""

    async def start(self, *, timeout_s: float, start: str | datetime = "first") -> None:
        """Consume from ``start``, append the marker, and return once it was read back.

        Raises:
            TimeoutError: the marker did not come back within ``timeout_s``.
            TopologyError, BrokerConnectionError: the stream or its exchange is missing,
                or may not be read (the broker closes the channel).
        """
        await self._channel.set_qos(prefetch_count=PREFETCH)
        queue = await self._channel.get_queue(self.stream, ensure=False)
        await queue.consume(self._on_delivery, arguments={"x-stream-offset": start})
        marker = Basic.Properties(
            headers={wire.H_STREAM_MARKER: self._marker},
            content_type=wire.CONTENT_TYPE,
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        async with asyncio.timeout(timeout_s):
            await self._publisher.publish(
                self._exchange, "", b"null", marker, self._marker, traced=False
            )
            await self._caught_up.wait()

    async def close(self) -> None:
        """Stop reading (closes the channel)."""
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await self._channel.close()

    async def _on_delivery(self, incoming: Inbound) -> None:
        headers = incoming.headers or {}
        try:
            if wire.H_STREAM_MARKER in headers:
                if wire.header_text(headers[wire.H_STREAM_MARKER]) == self._marker:
                    self._caught_up.set()
            else:
                self.entries += 1
                self._on_record(incoming)
        except Exception:
            log.exception("%s: a record could not be read; skipped", self.stream)
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await incoming.ack()
