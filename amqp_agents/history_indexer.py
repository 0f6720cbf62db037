"""The history indexer: tails a namespace's history stream into PostgreSQL.

It reads ``{ns}.history`` from the offset it stored, and writes each batch of messages
together with the offset after the batch in one transaction
(:func:`~amqp_agents.history_index.write_batch`). Killed at any point, it restarts at the
first entry it had not committed: nothing is skipped, and the upsert by message id
makes re-reading harmless anyway.

It keeps itself running: when PostgreSQL or the broker goes away (a restart, a
terminated backend, a dropped link) it logs one line, waits, reconnects both and
resumes from the stored offset. Only one indexer per namespace writes at a time (a
PostgreSQL advisory lock); a second one waits for the lock, as a hot standby.

Run it with ``amqp-agents history index --db postgresql://...`` or :func:`run_indexer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import aiormq.abc
import asyncpg
from aio_pika.abc import AbstractConnection

from . import wire
from ._delivery_tap import Delivery, DeliveryTap
from .errors import InvalidMessageError
from .history import H_STREAM_OFFSET, decode_entry
from .history_index import Row, ensure_schema, prune_markers, stored_offset, write_batch
from .message import Message

log = logging.getLogger(__name__)

BATCH_MAX = 2000
"""Most entries written in one transaction."""
INDEX_PREFETCH = 3 * BATCH_MAX
"""Unacknowledged entries the broker may send: while one batch is written, the next
ones arrive (with the prefetch equal to a batch, the read stopped during each write)."""
BATCH_WINDOW_S = 0.05
"""How long a batch collects entries after its first one: without it a busy stream was
committed about 6 entries at a time (a transaction's round trips per 6 messages). A
batch holding a query's marker is committed as soon as nothing more is waiting, so
read-your-writes queries do not wait for the window."""
RETRY_PAUSES_S = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Pauses between reconnection attempts; the last one repeats."""
APPLICATION_NAME = "amqp-agents history indexer"
"""How the indexer's connection shows in ``pg_stat_activity``."""
COMMAND_TIMEOUT_S = 60.0
"""A statement that takes longer is taken for a lost connection: start over."""
LOCK_POLL_S = 2.0
"""How often a standby indexer tries to take over its namespace."""
PRUNE_EVERY_S = 600.0
"""Markers no query collected are pruned when the indexer starts and this often after."""


class _Disconnected(Exception):
    """The broker closed the channel the indexer reads from."""


_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection cut mid-commit can leave this state error
    asyncpg.exceptions.OperatorInterventionError,  # terminated backend, shutdown
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    _Disconnected,
)


@dataclass(frozen=True, slots=True)
class Commit:
    """What one committed batch did (for :class:`HistoryIndexer`'s ``on_commit``)."""

    entries: int
    """Stream entries in the batch (markers and undecodable ones included)."""
    rows: int
    next_offset: int


class HistoryIndexer:
    """Copies a namespace's history stream into the index, for as long as it runs.

    Args:
        amqp_url: the broker.
        namespace: whose ``{ns}.history`` to index.
        dsn: the PostgreSQL database (``postgresql://user@host:5432/db``).
        on_commit: called after every committed batch (progress, tests, benchmarks).
    """

    def __init__(
        self,
        amqp_url: str,
        namespace: str,
        dsn: str,
        *,
        on_commit: Callable[[Commit], None] | None = None,
    ) -> None:
        self.amqp_url = amqp_url
        self.namespace = wire.validate_namespace(namespace)
        self.dsn = dsn
        self.on_commit = on_commit
        self.commits = 0
        self.reconnects = 0
        """How many times it lost PostgreSQL or the broker and started over."""
        self._pruned_at = 0.0
        self._just_attached = True
        """No entry at or past the stored offset has arrived since the read (re)started:
        a first entry past it means retention removed the ones between."""

    async def run(self) -> None:
        """Index until cancelled; reconnect and resume after any connection loss."""
        failures = 0
        while True:
            commits = self.commits
            try:
                await self._run_once()
            except _TRANSIENT as exc:
                self.reconnects += 1
                failures = failures + 1 if self.commits == commits else 1
                pause = RETRY_PAUSES_S[min(failures - 1, len(RETRY_PAUSES_S) - 1)]
                log.warning(
                    "history indexer of %r: %s: %s; resuming in %.1fs",
                    self.namespace,
                    type(exc).__name__,
                    exc,
                    pause,
                )
                await asyncio.sleep(pause)
            except Exception:
                log.exception("history indexer of %r stopped", self.namespace)
                raise

    async def _run_once(self) -> None:
        """Connect to both, take the namespace's lock, copy until something fails."""
        database = await asyncpg.connect(
            self.dsn,
            server_settings={"application_name": APPLICATION_NAME},
            command_timeout=COMMAND_TIMEOUT_S,
        )
        broker: AbstractConnection | None = None
        try:
            await ensure_schema(database)
            await self._lock(database)
            await self._prune(database)
            offset = await stored_offset(database, self.namespace)
            broker = await aio_pika.connect(
                self.amqp_url, client_properties={"connection_name": "history indexer"}
            )
            channel = await broker.channel()
            await self._copy(database, await channel.get_underlay_channel(), offset or 0)
        finally:
            if broker is not None:
                with contextlib.suppress(Exception):
                    await broker.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(database.close(), 5)
            database.terminate()

    async def _prune(self, database: asyncpg.Connection) -> None:
        await prune_markers(database, self.namespace)
        self._pruned_at = time.monotonic()

    async def _lock(self, database: asyncpg.Connection) -> None:
        """Hold the namespace's advisory lock (released when the connection ends)."""
        key = "amqp_agents_history:" + self.namespace
        waiting = False
        while not await database.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key
        ):
            if not waiting:
                log.warning("history indexer of %r: another one runs; waiting", self.namespace)
                waiting = True
            await asyncio.sleep(LOCK_POLL_S)

    async def _copy(
        self, database: asyncpg.Connection, channel: aiormq.abc.AbstractChannel, offset: int
    ) -> None:
        """Read from ``offset`` on, committing each batch with the offset after it.

        The read and the writes overlap: while a batch is written, the tap keeps
        collecting the next one (up to :data:`INDEX_PREFETCH` unacknowledged entries,
        room for a few batches); a batch is acknowledged once committed.
        """
        arrived: deque[Delivery] = deque()
        wake = asyncio.Event()
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_delivery(delivered: Delivery) -> None:
            arrived.append(delivered)
            wake.set()

        def on_error(exc: BaseException) -> None:
            if not failed.done():
                failed.set_exception(exc)

        tap = DeliveryTap(channel, f"history-indexer-{uuid.uuid4()}", on_delivery, on_error)
        await channel.basic_qos(prefetch_count=INDEX_PREFETCH)
        await tap.consume(wire.history_name(self.namespace), arguments={H_STREAM_OFFSET: offset})
        log.info("history indexer of %r: reading from offset %d", self.namespace, offset)
        self._just_attached = True
        closing = asyncio.ensure_future(channel.closing)
        try:
            while True:
                batch = await _collect(arrived, wake, closing, failed)
                offset = await self._commit(database, batch, offset)
                await channel.basic_ack(batch[-1].delivery_tag or 0, multiple=True, wait=False)
        finally:
            closing.cancel()
            if not failed.done():
                failed.cancel()

    async def _commit(
        self,
        database: asyncpg.Connection,
        batch: Sequence[Delivery | aiormq.abc.DeliveredMessage],
        offset: int,
    ) -> int:
        """Write one batch; return the next offset to read."""
        rows: list[Row] = []
        markers: list[tuple[str, int]] = []
        next_offset = offset
        gap = ""
        for delivered in batch:
            headers = delivered.header.properties.headers or {}
            at = headers.get(H_STREAM_OFFSET)
            if not isinstance(at, int) or at < offset:
                continue  # a read starts at its chunk's first entry: already indexed
            if at > next_offset and not self._just_attached:
                # Mid-read, the broker skipped entries: read again from the first one.
                gap = f"stream offsets {next_offset}..{at - 1} were not delivered"
                break
            if at > next_offset:
                log.warning(
                    "history indexer of %r: stream offsets %d..%d were removed by retention"
                    " before they were indexed",
                    self.namespace,
                    next_offset,
                    at - 1,
                )
            self._just_attached = False
            next_offset = at + 1
            if wire.H_HISTORY_MARKER in headers:
                markers.append((wire.header_text(headers[wire.H_HISTORY_MARKER]), at))
                continue
            try:
                message = decode_entry(delivered)
            except InvalidMessageError as exc:
                log.warning("history indexer: entry %d is not a message, skipped: %s", at, exc)
                continue
            rows.append(_row(message, headers, delivered.body, at))
        if next_offset != offset:
            await write_batch(database, self.namespace, rows, markers, next_offset)
            self.commits += 1
            if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
                await self._prune(database)
            if self.on_commit is not None:
                self.on_commit(Commit(len(batch), len(rows), next_offset))
        if gap:
            raise _Disconnected(f"{gap}; reading again from offset {next_offset}")
        return next_offset


async def _collect(
    arrived: deque[Delivery],
    wake: asyncio.Event,
    closing: asyncio.Future[Any],
    failed: asyncio.Future[None],
) -> list[Delivery]:
    """A batch: what has arrived, and what arrives within :data:`BATCH_WINDOW_S` of the
    first entry, up to :data:`BATCH_MAX`; cut short once it holds a query's marker and
    nothing more is waiting (read-your-writes queries do not wait for the window).

    Raises:
        _Disconnected: the channel closed.
    """
    loop = asyncio.get_running_loop()
    batch: list[Delivery] = []
    marker = False
    deadline: float | None = None
    while len(batch) < BATCH_MAX:
        if arrived:
            entry = arrived.popleft()
            batch.append(entry)
            marker = marker or _is_marker(entry)
            continue
        if batch:
            if deadline is None:
                deadline = loop.time() + BATCH_WINDOW_S
            left = deadline - loop.time()
            if marker or left <= 0:
                break
        else:
            left = None
        wake.clear()
        waiter = asyncio.ensure_future(wake.wait())
        await asyncio.wait({waiter, closing, failed}, timeout=left, return_when=FIRST_COMPLETED)
        waiter.cancel()
        if failed.done():
            failed.result()
        if closing.done() and not arrived:
            raise _Disconnected(f"channel closed: {closing.exception()}")
    return batch


def _is_marker(delivered: Delivery) -> bool:
    return wire.H_HISTORY_MARKER in (delivered.header.properties.headers or {})


def _row(message: Message, headers: Mapping[str, object], body: bytes, offset: int) -> Row:
    """The index row of a decoded entry: the body and metadata kept as they were sent."""
    metadata = headers.get(wire.H_METADATA)
    return Row(
        id=_text(message.id),
        conversation=None if message.conversation_id is None else _text(message.conversation_id),
        sender=message.sender,
        recipient=message.recipient,
        type=message.type.value,
        priority=int(message.priority),
        timestamp=message.timestamp,
        reply_to=None if message.reply_to is None else _text(message.reply_to),
        content=body.decode("utf-8"),
        metadata=metadata if isinstance(metadata, str) else _JSON.encode(message.metadata),
        stream_offset=offset,
    )


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _text(value: str) -> str:
    """``value`` as PostgreSQL text can hold it: NUL (valid in AMQP strings) becomes U+FFFD."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


async def run_indexer(
    amqp_url: str,
    namespace: str,
    dsn: str,
    *,
    on_commit: Callable[[Commit], None] | None = None,
) -> None:
    """Run a :class:`HistoryIndexer` until cancelled (the ``history index`` command)."""
    await HistoryIndexer(amqp_url, namespace, dsn, on_commit=on_commit).run()
