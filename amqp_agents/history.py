"""Reading the durable message history a namespace keeps in a RabbitMQ stream.

Every message published to the namespace's exchange for a known agent (and every
reply) is also appended to the stream ``{ns}.history``; retention by age and size
keeps it bounded (docs/history.md).

An AMQP 0.9.1 stream consumer is never told it reached the end, and declare-ok reports
0 messages for a stream. So a scan first appends a small marker message and reads
until it sees that marker: everything published before the query is then included,
without guessing with an idle timeout.

A scan is made fast and bounded rather than clever:

* ``since`` starts the stream read at that time (``x-stream-offset`` with a timestamp)
  instead of at the first retained message; ``until`` ends it once the entries are
  past that time; an oldest-first ``limit`` ends it at the limit-th match.
* The headers (conversation, sender, recipient, timestamp) decide whether an entry can
  match; only those that can are decoded into a :class:`Message`.
* Deliveries are taken straight from the connection's frame reader by a
  :class:`~amqp_agents._delivery_tap.DeliveryTap` (no frame queue, no task and no
  wrapper object per delivery) and acknowledged in batches (``multiple``) with a large
  prefetch.
* The timeout is the caller's, and a progress callback reports a long scan.

Entry timestamps are the senders' clocks while the stream is ordered by arrival, so
the read starts :data:`CLOCK_SKEW` before ``since`` and reads :data:`CLOCK_SKEW` past
``until``: a message that reached the broker later than that after it was created is
missed by a time-bounded scan (never by an unbounded one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import aiormq.abc
from aio_pika import DeliveryMode
from aio_pika import Message as AmqpMessage
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from . import wire
from ._delivery_tap import Delivery, DeliveryTap
from .errors import HistoryQueryError, HistoryTimeoutError, InvalidMessageError
from .message import Message

log = logging.getLogger(__name__)

SCAN_PREFETCH = 2000
"""Deliveries in flight to a scan: enough that the broker never waits for our acks."""
ACK_EVERY = 500
"""One ``multiple`` acknowledgement per this many deliveries (a stream needs acks to
keep delivering; it does not need one per message)."""
PROGRESS_EVERY = 10_000
"""A scan's progress callback is called after this many entries, and at the end."""
CLOCK_SKEW = timedelta(seconds=10)
"""How far a message's own timestamp may lag its arrival in the stream (see above)."""
DEFAULT_SCAN_TIMEOUT = 60.0
H_STREAM_OFFSET = "x-stream-offset"
"""The consume argument saying where a stream read starts, and the header carrying each
delivered entry's offset."""


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Which retained messages a history read returns.

    Attributes:
        conversation_id: only this conversation's messages.
        agent_id: only messages sent by or to this agent.
        since: only messages whose timestamp is at or after this (timezone-aware).
        until: only messages whose timestamp is at or before this (timezone-aware).
        limit: at most this many messages: the oldest ones, or the newest with
            ``newest_first``.
        newest_first: return the newest message first (default: send order).
    """

    conversation_id: str | None = None
    agent_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    newest_first: bool = False

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise HistoryQueryError(f"{name} must be timezone-aware, got {value!r}")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise HistoryQueryError(f"since {self.since} is after until {self.until}")
        if self.limit is not None and self.limit < 1:
            raise HistoryQueryError(f"limit must be at least 1, got {self.limit}")

    def matches(self, message: Message) -> bool:
        """Whether a decoded message belongs in the result."""
        if self.conversation_id is not None and message.conversation_id != self.conversation_id:
            return False
        if self.agent_id is not None and self.agent_id not in (message.sender, message.recipient):
            return False
        if self.since is not None and message.timestamp < self.since:
            return False
        return self.until is None or message.timestamp <= self.until

    def may_match(self, headers: Mapping[str, Any]) -> bool:
        """False when the headers alone show the entry cannot match; True: decode it.

        Only headers whose value decides exactly as :func:`wire.decode` would are used:
        ``x-conversation-id`` is the only source of a conversation id; a sender or
        recipient is judged only when both headers are text (else the routing key or
        defaults decide); a timestamp only when ``x-timestamp-us`` is an integer.
        """
        if self.conversation_id is not None:
            value = headers.get(wire.H_CONVERSATION)
            if value is None or (isinstance(value, str) and value != self.conversation_id):
                return False
        if self.agent_id is not None:
            sender, recipient = headers.get(wire.H_SENDER), headers.get(wire.H_RECIPIENT)
            if (
                isinstance(sender, str)
                and isinstance(recipient, str)
                and self.agent_id not in (sender, recipient)
            ):
                return False
        if self.since is not None or self.until is not None:
            stamp = _timestamp_us(headers)
            if stamp is not None:
                if self.since is not None and stamp < _to_us(self.since):
                    return False
                if self.until is not None and stamp > _to_us(self.until):
                    return False
        return True


@dataclass(frozen=True, slots=True)
class ScanProgress:
    """How far a stream scan got: reported during a long scan and at its end.

    Attributes:
        read: stream entries examined (markers and undecodable entries included).
        decoded: entries whose headers could match, so were decoded.
        matched: messages kept for the result so far.
        elapsed_s: seconds since the scan started reading.
        done: True for the last report of a scan that reached its end.
    """

    read: int
    decoded: int
    matched: int
    elapsed_s: float
    done: bool = False


ProgressCallback = Callable[[ScanProgress], None]
MatchCallback = Callable[[Message], None]


class QueryBounds(TypedDict, total=False):
    """A :class:`HistoryQuery`'s bounds, as keyword arguments of the history queries."""

    since: datetime | None
    until: datetime | None
    limit: int | None
    newest_first: bool


class HistoryBounds(QueryBounds, total=False):
    """The keyword arguments of the client's history queries: the bounds, plus
    :func:`scan_history`'s ``timeout`` and ``progress``."""

    timeout: float | None
    progress: ProgressCallback | None


@dataclass(slots=True)
class _Scan:
    """The state of one scan; :meth:`on_delivery` is the channel's consumer callback."""

    query: HistoryQuery
    marker: str
    progress: ProgressCallback | None
    done: asyncio.Future[None]
    found: deque[Message] = field(default_factory=deque)
    read: int = 0
    next_offset: int | None = None
    decoded: int = 0
    acked_tag: int = 0
    started: float = field(default_factory=time.perf_counter)
    stop_after_us: int | None = None
    on_match: MatchCallback | None = None
    """Called with each match instead of keeping it (a follow)."""
    read_matches: int = 0
    ack_every: int = ACK_EVERY

    tap: DeliveryTap | None = None

    def __post_init__(self) -> None:
        if self.query.newest_first and self.query.limit is not None:
            self.found = deque(maxlen=self.query.limit)

    def snapshot(self) -> ScanProgress:
        return ScanProgress(
            self.read,
            self.decoded,
            len(self.found),
            time.perf_counter() - self.started,
            self.done.done() and not self.done.cancelled() and self.done.exception() is None,
        )

    async def consume(self, channel: aiormq.abc.AbstractChannel, stream: str, start: Any) -> str:
        """Start reading ``stream`` at ``start``; return the consumer tag."""
        self.tap = DeliveryTap(
            channel, f"history-scan-{uuid.uuid4()}", self.on_delivery, self.on_error
        )
        await self.tap.consume(stream, arguments={H_STREAM_OFFSET: start})
        return self.tap.consumer_tag

    def on_error(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def on_delivery(self, delivered: Delivery) -> None:
        # Called in stream order, synchronously, by the connection's reader (_delivery_tap).
        tag = delivered.delivery_tag
        if self.done.done():
            return
        self.read += 1
        self._examine(delivered)
        if self.progress is not None and self.read % PROGRESS_EVERY == 0:
            self.progress(self.snapshot())
        if tag - self.acked_tag >= self.ack_every and not self.done.done():
            self.acked_tag = tag
            assert self.tap is not None
            self.tap.ack_through(tag)

    def _examine(self, delivered: Delivery) -> None:
        headers = delivered.header.properties.headers or {}
        at = headers.get(H_STREAM_OFFSET)
        if isinstance(at, int):
            if self.next_offset is not None and at > self.next_offset:
                # Should not happen (the stream is read in order); said if it does.
                log.warning(
                    "history scan: the broker skipped stream offsets %d..%d",
                    self.next_offset,
                    at - 1,
                )
            self.next_offset = at + 1
        if wire.H_HISTORY_MARKER in headers:
            if wire.header_text(headers[wire.H_HISTORY_MARKER]) == self.marker:
                self.done.set_result(None)
            return
        if self.stop_after_us is not None:
            stamp = _timestamp_us(headers)
            if stamp is not None and stamp > self.stop_after_us:
                self.done.set_result(None)
                return
        if not self.query.may_match(headers):
            return
        self.decoded += 1
        try:
            message = decode_entry(delivered)
        except InvalidMessageError as exc:
            log.debug("history: skipping undecodable entry: %s", exc)
            return
        if not self.query.matches(message):
            return
        if self.on_match is not None:
            self.on_match(message)
            self.read_matches += 1
            if self.query.limit is not None and self.read_matches >= self.query.limit:
                self.done.set_result(None)
            return
        self.found.append(message)
        limit = self.query.limit
        if limit is not None and not self.query.newest_first and len(self.found) >= limit:
            self.done.set_result(None)


async def scan_history(
    channel: AbstractChannel,
    namespace: str,
    query: HistoryQuery,
    *,
    timeout: float | None = DEFAULT_SCAN_TIMEOUT,
    progress: ProgressCallback | None = None,
    clock_skew: timedelta = CLOCK_SKEW,
) -> list[Message]:
    """The retained messages that match ``query``, read from the stream.

    Args:
        channel: a channel with publisher confirms, used only for this scan.
        namespace: the namespace whose history stream to read.
        query: what to return; its ``since`` sets where the read starts.
        timeout: bound on the whole scan in seconds (None: no bound).
        progress: called every :data:`PROGRESS_EVERY` entries and once at the end.
        clock_skew: how far before ``since`` the read starts and past ``until`` it ends.

    Raises:
        HistoryTimeoutError: the scan did not reach its end within ``timeout``.
    """
    name = wire.history_name(namespace)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            marker = await append_marker(channel, namespace)
    except TimeoutError:
        raise HistoryTimeoutError(
            f"history of {namespace!r}: the marker was not confirmed within {timeout}s"
        ) from None
    underlay = await channel.get_underlay_channel()
    await underlay.basic_qos(prefetch_count=SCAN_PREFETCH)
    scan = _Scan(query, marker, progress, asyncio.get_running_loop().create_future())
    if query.until is not None:
        scan.stop_after_us = _to_us(query.until + clock_skew)
    start: datetime | str = "first" if query.since is None else query.since - clock_skew
    consumer_tag = await scan.consume(underlay, name, start)
    try:
        remaining = None if timeout is None else max(timeout - (time.perf_counter() - started), 0)
        await asyncio.wait_for(asyncio.shield(scan.done), remaining)
    except TimeoutError:
        at = scan.snapshot()
        raise HistoryTimeoutError(
            f"history scan of {name} did not reach the stream's end within {timeout}s"
            f" (read {at.read} entries, {at.matched} matched): narrow it with since,"
            " until or limit, or give a longer timeout"
        ) from None
    finally:
        if not underlay.is_closed:
            await underlay.basic_cancel(consumer_tag)
    if progress is not None:
        progress(scan.snapshot())
    found = list(scan.found)
    if query.newest_first:
        found.reverse()
    return found


async def follow_history(
    channel: AbstractChannel,
    namespace: str,
    query: HistoryQuery,
    on_match: MatchCallback,
    *,
    on_ready: Callable[[], None] | None = None,
    clock_skew: timedelta = CLOCK_SKEW,
) -> None:
    """Call ``on_match`` with each matching message as it reaches the stream, until
    cancelled, or until ``query``'s ``limit`` or ``until`` is reached (``tail -f``).

    The read starts at ``query.since`` (like :func:`scan_history`), else at the next
    entry appended. Each delivery is acknowledged at once: live traffic is slow, and a
    batched ack would stall the read at the prefetch while waiting for the batch to fill.
    ``on_ready`` is called once the broker has registered the read: a message sent
    after that is seen.
    """
    if query.newest_first:
        raise HistoryQueryError("a follow reads oldest first: newest_first does not apply")
    underlay = await channel.get_underlay_channel()
    await underlay.basic_qos(prefetch_count=SCAN_PREFETCH)
    done = asyncio.get_running_loop().create_future()
    scan = _Scan(query, "", None, done, on_match=on_match, ack_every=1)
    if query.until is not None:
        scan.stop_after_us = _to_us(query.until + clock_skew)
    start: datetime | str = "next" if query.since is None else query.since - clock_skew
    consumer_tag = await scan.consume(underlay, wire.history_name(namespace), start)
    if on_ready is not None:
        on_ready()
    try:
        await asyncio.shield(done)
    finally:
        if not underlay.is_closed:
            await underlay.basic_cancel(consumer_tag)


def bounded(query: HistoryQuery, bounds: QueryBounds) -> HistoryQuery:
    """``query`` narrowed by the keyword ``bounds`` of a client's history query."""
    return dataclasses.replace(
        query,
        since=bounds.get("since"),
        until=bounds.get("until"),
        limit=bounds.get("limit"),
        newest_first=bounds.get("newest_first", False),
    )


async def read_bounded(
    connection: AbstractRobustConnection,
    namespace: str,
    query: HistoryQuery,
    bounds: HistoryBounds,
) -> list[Message]:
    """:func:`scan_history` of ``query`` narrowed by the client's keyword ``bounds``, on
    a channel of its own (a scan sets the channel's prefetch and consumes the stream)."""
    query = bounded(query, bounds)
    channel = await connection.channel(publisher_confirms=True)
    try:
        return await scan_history(
            channel,
            namespace,
            query,
            timeout=bounds.get("timeout", DEFAULT_SCAN_TIMEOUT),
            progress=bounds.get("progress"),
        )
    finally:
        await channel.close()


class _Entry:
    """A stream delivery as :func:`wire.decode` reads it, straight from the frame.

    aio-pika's ``IncomingMessage`` copies and checks every property through a dozen
    attribute setters: a tenth of a scan's time, for nothing a history read needs.
    """

    __slots__ = (
        "body",
        "content_type",
        "correlation_id",
        "headers",
        "message_id",
        "priority",
        "routing_key",
        "timestamp",
        "type",
    )

    def __init__(self, delivered: aiormq.abc.DeliveredMessage | Delivery) -> None:
        properties = delivered.header.properties
        self.body = delivered.body
        self.headers = properties.headers
        self.content_type = properties.content_type
        self.message_id = properties.message_id
        self.correlation_id = properties.correlation_id
        self.type = properties.message_type
        self.priority = properties.priority
        self.timestamp = properties.timestamp
        self.routing_key = delivered.routing_key


def decode_entry(delivered: aiormq.abc.DeliveredMessage | Delivery) -> Message:
    """The message of a history stream delivery.

    Raises:
        InvalidMessageError: the entry is not a message (see :func:`wire.decode`).
    """
    return wire.decode(_Entry(delivered))


async def append_marker(channel: AbstractChannel, namespace: str) -> str:
    """Append a marker to the history stream; return its id once the broker confirmed it.

    Every message whose send was confirmed before this call is ahead of the marker in
    the stream, so a reader that has passed the marker has seen them all.
    """
    marker = str(uuid.uuid4())
    await channel.default_exchange.publish(
        AmqpMessage(
            b"null",
            headers={wire.H_HISTORY_MARKER: marker},
            content_type=wire.CONTENT_TYPE,
            delivery_mode=DeliveryMode.PERSISTENT,
        ),
        routing_key=wire.history_name(namespace),
    )
    return marker


def _to_us(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (as ``x-timestamp-us`` counts them)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp_us(headers: Mapping[str, Any]) -> int | None:
    value = headers.get(wire.H_TIMESTAMP_US)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
