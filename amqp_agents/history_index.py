"""The history index in PostgreSQL: its schema, its writes, and the queries it answers.

The stream ``{ns}.history`` is the record; this index is a copy that answers
``get_conversation`` and ``get_agent_history`` with an index lookup instead of a read
of the whole stream. :mod:`amqp_agents.history_indexer` fills it; this module owns the
SQL. A copy made from the stream can always be rebuilt from the stream
(docs/history.md), so nothing here is the only place a message is kept.

Three tables, shared by every namespace (a ``namespace`` column keeps them apart):

* ``amqp_agents_history``: one row per message, keyed by (namespace, message id);
* ``amqp_agents_history_offset``: per namespace, the next stream offset to index, written
  in the same transaction as the rows, so a restart neither skips nor duplicates;
* ``amqp_agents_history_marker``: the query markers the indexer has passed, by which a
  query knows the index holds every message confirmed before it started.

The driver is asyncpg (docs/history.md says why); it is the optional extra ``postgres``,
imported only by this module and the indexer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Unpack

import asyncpg
from aio_pika.abc import AbstractChannel

from .errors import HistoryError, HistoryLagError
from .history import HistoryQuery, QueryBounds, append_marker
from .message import Message, MessagePriority, MessageType

SCHEMA = """
CREATE TABLE IF NOT EXISTS amqp_agents_history (
    namespace     text        NOT NULL,
    id            text        NOT NULL,
    conversation  text,
    sender        text        NOT NULL,
    recipient     text        NOT NULL,
    type          text        NOT NULL,
    priority      smallint    NOT NULL,
    "timestamp"   timestamptz NOT NULL,
    reply_to      text,
    content       text        NOT NULL,
    metadata      text        NOT NULL,
    stream_offset bigint      NOT NULL,
    PRIMARY KEY (namespace, id)
);
CREATE INDEX IF NOT EXISTS amqp_agents_history_by_conversation
    ON amqp_agents_history (namespace, conversation, "timestamp", stream_offset)
    WHERE conversation IS NOT NULL;
CREATE INDEX IF NOT EXISTS amqp_agents_history_by_sender
    ON amqp_agents_history (namespace, sender, "timestamp", stream_offset);
CREATE INDEX IF NOT EXISTS amqp_agents_history_by_recipient
    ON amqp_agents_history (namespace, recipient, "timestamp", stream_offset);
CREATE TABLE IF NOT EXISTS amqp_agents_history_offset (
    namespace    text        PRIMARY KEY,
    next_offset  bigint      NOT NULL,
    committed_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS amqp_agents_history_marker (
    namespace     text        NOT NULL,
    marker        text        NOT NULL,
    stream_offset bigint      NOT NULL,
    seen_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, marker)
);
"""
"""``content`` is the message body exactly as it was sent (JSON text) and ``metadata`` the
``x-metadata`` header (JSON text, ``{}`` when absent): text, not ``json``/``jsonb``, so a
value PostgreSQL's JSON types refuse or rewrite (``NaN``, ``\\u0000``, a float with more
digits than a double) is kept as sent. Query into them with ``content::jsonb``."""

_STAGING = "amqp_agents_history_batch"
_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (id text, conversation text, sender text,
    recipient text, type text, priority int2, "timestamp" timestamptz, reply_to text,
    content text, metadata text, stream_offset int8) ON COMMIT DELETE ROWS
"""
"""A batch is copied (``COPY``, binary) into this session table, then upserted from it:
a quarter to a half faster than one ``INSERT`` of eleven arrays, with less client CPU."""
_UPSERT = f"""
INSERT INTO amqp_agents_history (namespace, id, conversation, sender, recipient, type,
    priority, "timestamp", reply_to, content, metadata, stream_offset)
SELECT $1, * FROM {_STAGING}
ON CONFLICT (namespace, id) DO UPDATE SET conversation = EXCLUDED.conversation,
    sender = EXCLUDED.sender, recipient = EXCLUDED.recipient, type = EXCLUDED.type,
    priority = EXCLUDED.priority, "timestamp" = EXCLUDED."timestamp",
    reply_to = EXCLUDED.reply_to, content = EXCLUDED.content,
    metadata = EXCLUDED.metadata, stream_offset = EXCLUDED.stream_offset
"""
_MARKERS = """
INSERT INTO amqp_agents_history_marker (namespace, marker, stream_offset)
SELECT $1, * FROM unnest($2::text[], $3::int8[]) ON CONFLICT DO NOTHING
"""
_SAVE_OFFSET = """
INSERT INTO amqp_agents_history_offset (namespace, next_offset, committed_at)
VALUES ($1, $2, now())
ON CONFLICT (namespace) DO UPDATE SET next_offset = EXCLUDED.next_offset, committed_at = now()
"""
_PRUNE_MARKERS = """
DELETE FROM amqp_agents_history_marker WHERE namespace = $1 AND seen_at < now() - $2::interval
"""
_COLUMNS = (
    'id, conversation, sender, recipient, type, priority, "timestamp", reply_to, content, metadata'
)

NOTIFY_CHANNEL = "amqp_agents_history"
"""The indexer notifies it (payload: the namespace) when it committed query markers."""
RECHECK_S = 0.05
"""A waiting query also checks this often, in case a notification was lost."""
DEFAULT_WAIT_S = 10.0
"""How long a query waits for the indexer to pass the point the query started at."""
MARKER_RETENTION = timedelta(hours=1)
"""Markers of queries that never collected them (a scan's, a crashed query's) are
deleted after this long."""


@dataclass(frozen=True, slots=True)
class Row:
    """One message as the index stores it (the columns of ``amqp_agents_history``)."""

    id: str
    conversation: str | None
    sender: str
    recipient: str
    type: str
    priority: int
    timestamp: datetime
    reply_to: str | None
    content: str
    metadata: str
    stream_offset: int


async def ensure_schema(connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
    """Create the tables and indexes if they are missing (idempotent).

    Under a lock: two ``CREATE TABLE IF NOT EXISTS`` at once (an indexer and a query
    starting together) can still both try to create the table, and one fails.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext('amqp_agents_history'))")
        await connection.execute(SCHEMA)


async def stored_offset(connection: asyncpg.Connection, namespace: str) -> int | None:
    """The next stream offset the indexer of ``namespace`` reads (None: it never committed)."""
    value = await connection.fetchval(
        "SELECT next_offset FROM amqp_agents_history_offset WHERE namespace = $1", namespace
    )
    return None if value is None else int(value)


async def write_batch(
    connection: asyncpg.Connection,
    namespace: str,
    rows: Sequence[Row],
    markers: Sequence[tuple[str, int]],
    next_offset: int,
) -> None:
    """Write rows, passed markers and the new offset in one transaction: all or nothing.

    A message id seen twice keeps its last entry (an upsert), so indexing the same
    stream range again changes nothing.
    """
    latest = {row.id: row for row in rows}  # one upsert may not touch a row twice
    if latest and connection not in _staged:
        await connection.execute(_STAGE)  # outside the transaction: a rollback keeps it
        _staged.add(connection)
    async with connection.transaction():
        if latest:
            await connection.copy_records_to_table(
                _STAGING, records=[_values(row) for row in latest.values()]
            )
            await connection.execute(_UPSERT, namespace)
        if markers:
            names, offsets = zip(*markers, strict=True)
            await connection.execute(_MARKERS, namespace, list(names), list(offsets))
            # Delivered at commit: wakes the queries waiting for these markers at once.
            await connection.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, namespace)
        await connection.execute(_SAVE_OFFSET, namespace, next_offset)


_staged: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()
"""The connections that have their staging table."""


async def prune_markers(connection: asyncpg.Connection, namespace: str) -> None:
    """Delete markers older than :data:`MARKER_RETENTION` that no query collected."""
    await connection.execute(_PRUNE_MARKERS, namespace, MARKER_RETENTION)


def _values(row: Row) -> tuple[Any, ...]:
    return (
        row.id,
        row.conversation,
        row.sender,
        row.recipient,
        row.type,
        row.priority,
        row.timestamp,
        row.reply_to,
        row.content,
        row.metadata,
        row.stream_offset,
    )


class HistoryIndex:
    """Answers history queries from the index, waiting (bounded) until it is current.

    Read-your-writes: a query appends a marker to the stream (on ``channel``) and waits
    until the indexer has passed it, so every message whose send was confirmed before
    the query started is in the answer. Without a channel the query answers from the
    index as it is.

    Use :meth:`open` to create one; :meth:`close` closes its pool.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        namespace: str,
        channel: AbstractChannel | None = None,
        *,
        wait_s: float = DEFAULT_WAIT_S,
    ) -> None:
        self.pool = pool
        self.namespace = namespace
        self.channel = channel
        self.wait_s = wait_s
        self._listener: asyncpg.Connection | None = None
        self._committed = asyncio.Event()

    @classmethod
    async def open(
        cls,
        dsn: str,
        namespace: str,
        channel: AbstractChannel | None = None,
        *,
        wait_s: float = DEFAULT_WAIT_S,
        pool_size: int = 4,
    ) -> HistoryIndex:
        """Connect to PostgreSQL and create the schema if missing.

        Args:
            dsn: ``postgresql://user@host:5432/db``.
            namespace: whose history to query.
            channel: a channel with publisher confirms for the read-your-writes marker.
            wait_s: how long a query waits for the indexer (:class:`HistoryLagError`).
            pool_size: connections kept for concurrent queries.

        Raises:
            HistoryError: PostgreSQL cannot be reached or refused us.
        """
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size)
            async with pool.acquire() as connection:
                await ensure_schema(connection)
            index = cls(pool, namespace, channel, wait_s=wait_s)
            if channel is not None:
                index._listener = await asyncpg.connect(dsn)
                await index._listener.add_listener(NOTIFY_CHANNEL, index._on_notify)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise HistoryError(f"history index: cannot use the database: {exc}") from exc
        return index

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        await self.pool.close()

    def _on_notify(self, _: object, __: int, ___: str, namespace: object) -> None:
        if namespace == self.namespace:
            self._committed.set()
            self._committed = asyncio.Event()

    async def conversation(
        self, conversation_id: str, **bounds: Unpack[QueryBounds]
    ) -> list[Message]:
        """A conversation's messages by timestamp (oldest first unless ``newest_first``)."""
        return await self.query(HistoryQuery(conversation_id=conversation_id, **bounds))

    async def agent_history(self, agent_id: str, **bounds: Unpack[QueryBounds]) -> list[Message]:
        """The messages sent by or to ``agent_id`` by timestamp."""
        return await self.query(HistoryQuery(agent_id=agent_id, **bounds))

    async def query(self, query: HistoryQuery, *, wait_s: float | None = None) -> list[Message]:
        """The indexed messages matching ``query``, after waiting for the indexer.

        ``wait_s``: how long to wait for it (None: the index's ``wait_s``).

        Raises:
            HistoryLagError: the indexer did not pass this query's marker in time.
            HistoryError: the database failed.
        """
        try:
            if self.channel is not None:
                marker = await append_marker(self.channel, self.namespace)
                await self._wait_for(marker, self.wait_s if wait_s is None else wait_s)
            sql, args = _select(self.namespace, query)
            records = await self.pool.fetch(sql, *args)
        except HistoryLagError:
            raise  # a TimeoutError, so an OSError: not a database failure
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise HistoryError(f"history index of {self.namespace!r}: {exc}") from exc
        return [_message(record) for record in records]

    async def _wait_for(self, marker: str, wait_s: float) -> None:
        """Return once the indexer has committed past ``marker`` (it deletes the marker)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            committed = self._committed  # the next commit with markers sets it
            seen = await self.pool.fetchval(
                "DELETE FROM amqp_agents_history_marker WHERE namespace = $1 AND marker = $2"
                " RETURNING 1",
                self.namespace,
                marker,
            )
            if seen is not None:
                return
            left = deadline - loop.time()
            if left <= 0:
                raise await self._lag_error(wait_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(committed.wait(), min(RECHECK_S, left))

    async def _lag_error(self, wait_s: float) -> HistoryLagError:
        row = await self.pool.fetchrow(
            "SELECT next_offset, extract(epoch FROM now() - committed_at) AS lag"
            " FROM amqp_agents_history_offset WHERE namespace = $1",
            self.namespace,
        )
        if row is None:
            return HistoryLagError(
                f"history index of {self.namespace!r}: no indexer has committed yet"
                f" (waited {wait_s}s); run `amqp-agents history index --db ...`",
                None,
                None,
            )
        lag, offset = float(row["lag"]), int(row["next_offset"])
        return HistoryLagError(
            f"history index of {self.namespace!r} is behind the stream: its indexer last"
            f" committed {lag:.1f}s ago (next stream offset {offset}) and had not reached"
            f" this query's start after {wait_s}s",
            lag,
            offset,
        )


def _select(namespace: str, query: HistoryQuery) -> tuple[str, list[Any]]:
    """The SQL for ``query``: one index range scan per branch, ordered, limited."""
    args: list[Any] = [namespace]
    bounds = ""
    if query.since is not None:
        args.append(query.since)
        bounds += f' AND "timestamp" >= ${len(args)}'
    if query.until is not None:
        args.append(query.until)
        bounds += f' AND "timestamp" <= ${len(args)}'
    order = "DESC" if query.newest_first else "ASC"
    ordering = f'ORDER BY "timestamp" {order}, stream_offset {order}'
    limit = ""
    if query.limit is not None:
        args.append(query.limit)
        limit = f" LIMIT ${len(args)}"
    conditions: list[str] = []
    if query.conversation_id is not None:
        args.append(query.conversation_id)
        conditions.append(f" AND conversation = ${len(args)}")
    extra = "".join(conditions)
    if query.agent_id is None:
        return (
            f"SELECT {_COLUMNS} FROM amqp_agents_history WHERE namespace = $1"
            f"{extra}{bounds} {ordering}{limit}",
            args,
        )
    # sender = X OR recipient = X as two branches, each walking its own index in order;
    # the second leaves out what the first has (a message an agent sent itself).
    args.append(query.agent_id)
    agent = f"${len(args)}"
    branches = [
        f"(SELECT {_COLUMNS}, stream_offset FROM amqp_agents_history WHERE namespace = $1"
        f" AND {match}{extra}{bounds} {ordering}{limit})"
        for match in (f"sender = {agent}", f"recipient = {agent} AND sender <> {agent}")
    ]
    sql = f"SELECT {_COLUMNS} FROM ({' UNION ALL '.join(branches)}) AS m {ordering}{limit}"
    return sql, args


def _message(record: asyncpg.Record) -> Message:
    return Message(
        id=record["id"],
        sender=record["sender"],
        recipient=record["recipient"],
        type=MessageType(record["type"]),
        priority=MessagePriority(record["priority"]),
        content=json.loads(record["content"]),
        metadata=json.loads(record["metadata"]),
        timestamp=record["timestamp"],
        reply_to=record["reply_to"],
        conversation_id=record["conversation"],
    )
