"""The history index against the real broker and the real PostgreSQL.

Every test gets its own database ``hist_<random>``, dropped afterwards. The indexer
runs as a task of the test (or as the CLI's process, to be killed with SIGKILL);
synchronisation is on its commits or on a query's read-your-writes wait, never on time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from amqp_agents import Message, MessagePriority, MessageQueue, MessageType, wire
from amqp_agents.errors import HistoryLagError
from amqp_agents.history import HistoryQuery, scan_history
from amqp_agents.history_index import HistoryIndex, ensure_schema
from amqp_agents.history_indexer import Commit, HistoryIndexer

from .conftest import ROOT, Spawn
from .history_support import append_to_history

pytestmark = pytest.mark.rabbitmq_only(
    reason="the history indexer is a process of its own (with PostgreSQL) reading the"
    " stream over AMQP"
)

PG_ADMIN_URL = os.environ.get("PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BASE = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    """A database of this test's own, dropped (connections and all) afterwards."""
    name = f"hist_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class Tail:
    """An in-process indexer and a way to await its progress."""

    def __init__(self, indexer: HistoryIndexer) -> None:
        self.indexer = indexer
        self.next_offset = 0
        self.commits: list[Commit] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        indexer.on_commit = self._on_commit

    def _on_commit(self, commit: Commit) -> None:
        self.commits.append(commit)
        self.next_offset = commit.next_offset
        for target, waiter in self._waiters:
            if commit.next_offset >= target and not waiter.done():
                waiter.set_result(None)

    async def reached(self, offset: int, timeout_s: float = 60) -> None:
        """Return once the indexer committed everything before ``offset``."""
        if self.next_offset >= offset:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((offset, waiter))
        await asyncio.wait_for(waiter, timeout_s)


@pytest.fixture
async def tail(amqp_url: str, queue: MessageQueue, dsn: str) -> AsyncIterator[Tail]:
    """An indexer of the test's namespace, running for the duration of the test."""
    tail = Tail(HistoryIndexer(amqp_url, queue.namespace, dsn))
    task = asyncio.create_task(tail.indexer.run())
    yield tail
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.fixture
async def marker_channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(amqp_url)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


@pytest.fixture
async def index(
    queue: MessageQueue, dsn: str, marker_channel: AbstractChannel
) -> AsyncIterator[HistoryIndex]:
    """Queries with read-your-writes (a marker per query)."""
    index = await HistoryIndex.open(dsn, queue.namespace, marker_channel, wait_s=60)
    yield index
    await index.close()


def mix(n: int) -> list[Message]:
    """Every type and priority, with and without conversation, metadata, reply_to."""
    types, priorities = list(MessageType), list(MessagePriority)
    contents: list[Any] = [
        {"text": "ünïcode ✓ \u2028", "n": [1, 2.5, None, True]},
        "plain",
        12345678901234567890,
        [0.1, -0.0, 1e300],
        None,
        {"nested": {"deep": [{"k": "v"}]}},
    ]
    return [
        Message(
            sender=f"s{i % 5}",
            recipient=f"r{i % 3}",
            type=types[i % len(types)],
            priority=priorities[(i // len(types)) % len(priorities)],
            content=contents[i % len(contents)],
            metadata={"trace": f"t{i}", "tags": ["x", i]} if i % 4 else {},
            reply_to=f"earlier-{i}" if i % 3 == 0 else None,
            conversation_id=f"c{i % 7}" if i % 5 else None,
        )
        for i in range(n)
    ]


async def test_every_row_equals_its_stream_entry_field_by_field(
    queue: MessageQueue, tail: Tail, index: HistoryIndex, marker_channel: AbstractChannel
) -> None:
    sent = mix(1000)
    for agent in {m.recipient for m in sent}:
        await queue.ensure_inbox(agent)
    for message in sent:
        await queue.send(message)

    indexed = {m.id: m for m in await index.query(HistoryQuery())}
    scanned = await scan_history(marker_channel, queue.namespace, HistoryQuery())
    streamed = {m.id: m for m in scanned}

    assert sorted(indexed) == sorted(streamed) == sorted(m.id for m in sent)
    ids = sorted(indexed)
    for field in Message.model_fields:
        assert [getattr(indexed[i], field) for i in ids] == [
            getattr(streamed[i], field) for i in ids
        ], field


async def test_queries_bound_order_and_page_like_the_stream_scan(
    queue: MessageQueue,
    tail: Tail,
    index: HistoryIndex,
    raw_channel: AbstractChannel,
    marker_channel: AbstractChannel,
) -> None:
    entries = [
        Message(
            sender="alice" if i % 3 else "bob",
            recipient="bob" if i % 3 else "alice",
            content=i,
            conversation_id="c" if i % 2 else "d",
            timestamp=BASE + timedelta(seconds=i),
        )
        for i in range(60)
    ]
    entries.append(Message(sender="bob", recipient="bob", content="self", conversation_id="c"))
    await append_to_history(raw_channel, queue.namespace, entries)
    queries = [
        HistoryQuery(conversation_id="c"),
        HistoryQuery(conversation_id="c", limit=5),
        HistoryQuery(conversation_id="c", limit=5, newest_first=True),
        HistoryQuery(
            conversation_id="d",
            since=BASE + timedelta(seconds=10),
            until=BASE + timedelta(seconds=20),
        ),
        HistoryQuery(agent_id="bob"),
        HistoryQuery(agent_id="bob", limit=4, newest_first=True),
        HistoryQuery(agent_id="alice", since=BASE + timedelta(seconds=30), limit=3),
    ]
    for query in queries:
        from_index = [m.id for m in await index.query(query)]
        from_stream = [m.id for m in await scan_history(marker_channel, queue.namespace, query)]
        assert from_index == from_stream, query


async def test_killed_indexer_restarts_with_no_gap_and_no_duplicate(
    queue: MessageQueue, raw_channel: AbstractChannel, dsn: str, index: HistoryIndex
) -> None:
    total = 10_000
    sent = [Message(sender="a", recipient="b", content={"i": i}) for i in range(total)]
    await append_to_history(raw_channel, queue.namespace, sent)

    first = await _start_indexer(queue.namespace, dsn)
    try:
        await _expect_offset_at_least(first, 1000)
        first.send_signal(signal.SIGKILL)
        await asyncio.wait_for(first.wait(), 30)
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    database = await asyncpg.connect(dsn)
    try:
        at_kill = await _index_state(database, queue.namespace)
        assert 1000 <= at_kill["next_offset"] < total, "killed mid-ingest"
        assert at_kill["offsets"] == list(range(at_kill["next_offset"])), (
            "what was committed is exactly the stream up to the stored offset"
        )

        second = await _start_indexer(queue.namespace, dsn)
        try:
            assert len(await index.query(HistoryQuery(limit=1))) == 1  # waits for it
        finally:
            second.kill()
            await second.wait()
        after = await _index_state(database, queue.namespace)
    finally:
        await database.close()
    assert after["offsets"] == list(range(total)), "no gap, no duplicate"
    assert after["ids"] == sorted(m.id for m in sent)


async def test_indexer_resumes_by_itself_after_its_database_connection_is_killed(
    queue: MessageQueue, tail: Tail, raw_channel: AbstractChannel, dsn: str
) -> None:
    # A PostgreSQL restart, as seen by the indexer: its backend is terminated mid-ingest
    # (the shared server itself is not restarted).
    total = 5000
    sent = [Message(sender="a", recipient="b", content=i) for i in range(total)]
    ingest = asyncio.create_task(append_to_history(raw_channel, queue.namespace, sent))
    await tail.reached(1)
    database = await asyncpg.connect(dsn)
    try:
        killed = await database.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = $1",
            "amqp-agents history indexer",
        )
        assert killed == 1
        await ingest
        await tail.reached(total)
        state = await _index_state(database, queue.namespace)
    finally:
        await database.close()
    assert state["offsets"] == list(range(total))
    assert tail.indexer.reconnects >= 1, "it noticed the loss and reconnected"


async def test_read_your_writes_under_concurrent_sends(
    queue: MessageQueue, tail: Tail, index: HistoryIndex
) -> None:
    await queue.ensure_inbox("bob")

    async def sender(n: int) -> None:
        for i in range(30):
            message = Message(sender=f"s{n}", recipient="bob", content=i, conversation_id=f"c{n}")
            await queue.send(message)
            got = await index.conversation(f"c{n}", newest_first=True, limit=1)
            assert [m.id for m in got] == [message.id], f"sender {n}, message {i}"

    await asyncio.gather(*(sender(n) for n in range(5)))


@pytest.mark.parametrize("indexer_ran", [False, True], ids=["never-ran", "stopped"])
async def test_a_query_the_indexer_does_not_reach_in_time_names_the_lag(
    amqp_url: str,
    queue: MessageQueue,
    dsn: str,
    marker_channel: AbstractChannel,
    indexer_ran: bool,
) -> None:
    if indexer_ran:
        tail = Tail(HistoryIndexer(amqp_url, queue.namespace, dsn))
        task = asyncio.create_task(tail.indexer.run())
        await queue.ensure_inbox("bob")
        await queue.send(Message(sender="a", recipient="bob", content=1))
        await tail.reached(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    index = await HistoryIndex.open(dsn, queue.namespace, marker_channel, wait_s=0.2)
    try:
        with pytest.raises(HistoryLagError) as info:
            await index.conversation("c")
    finally:
        await index.close()
    if indexer_ran:
        assert info.value.indexed_offset == 1 and info.value.lag_s is not None
        assert "behind the stream" in str(info.value)
    else:
        assert info.value.indexed_offset is None and "no indexer" in str(info.value)


# -- helpers ---------------------------------------------------------------------------


async def _start_indexer(namespace: str, dsn: str) -> asyncio.subprocess.Process:
    """``amqp-agents history index`` as a user runs it."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "amqp_agents",
        "history",
        "index",
        "--namespace",
        namespace,
        "--db",
        dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
    )


async def _expect_offset_at_least(process: asyncio.subprocess.Process, offset: int) -> None:
    """Read the indexer's progress lines until one reports ``offset`` or more."""
    assert process.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(60):
        while line := (await process.stdout.readline()).decode():
            seen.append(line)
            if line.startswith("indexed to offset") and int(line.split()[3]) >= offset:
                return
    raise AssertionError(f"indexer exited first:\n{''.join(seen)}")


async def _index_state(database: asyncpg.Connection, namespace: str) -> dict[str, Any]:
    offsets = await database.fetch(
        "SELECT stream_offset FROM amqp_agents_history WHERE namespace = $1 ORDER BY stream_offset",
        namespace,
    )
    ids = await database.fetch(
        "SELECT id FROM amqp_agents_history WHERE namespace = $1 ORDER BY id", namespace
    )
    next_offset = await database.fetchval(
        "SELECT next_offset FROM amqp_agents_history_offset WHERE namespace = $1", namespace
    )
    return {
        "offsets": [r[0] for r in offsets],
        "ids": [r[0] for r in ids],
        "next_offset": next_offset,
    }


async def test_entries_the_broker_skips_mid_read_are_read_again(amqp_url: str, dsn: str) -> None:
    # Offsets 0, 1, then 3: what is before the gap is committed, then the indexer starts
    # over from offset 2 rather than taking the gap for retention.
    indexer = HistoryIndexer(amqp_url, "gaps", dsn)
    database = await asyncpg.connect(dsn)
    try:
        await ensure_schema(database)
        indexer._just_attached = True
        batch = [_delivery(offset) for offset in (0, 1, 3)]
        with pytest.raises(Exception, match=r"offsets 2\.\.2 were not delivered") as info:
            await indexer._commit(database, batch, 0)
        assert type(info.value).__name__ == "_Disconnected", "a reason to read again"
        state = await _index_state(database, "gaps")
    finally:
        await database.close()
    assert state["offsets"] == [0, 1] and state["next_offset"] == 2


def _delivery(offset: int) -> DeliveredMessage:
    """A stream delivery as aiormq hands it over."""
    out = wire.encode(Message(sender="a", recipient="b", content=offset))
    properties = Basic.Properties(
        content_type=wire.CONTENT_TYPE,
        headers={**out.headers, "x-stream-offset": offset},
        message_id=out.message_id,
        message_type=out.type,
        priority=out.priority,
    )
    return DeliveredMessage(
        delivery=Basic.Deliver(delivery_tag=offset + 1, routing_key="notification.2.a.b"),
        header=ContentHeader(body_size=len(out.body), properties=properties),
        body=out.body,
        channel=cast(Any, None),
    )


# -- the client's queries with history_db, and the indexer inside `amqp-agents run` ------


async def test_client_with_history_db_reads_the_index_with_read_your_writes(
    make_queue: Callable[..., Awaitable[MessageQueue]], tail: Tail, dsn: str
) -> None:
    queue = await make_queue(history_db=dsn)
    await queue.ensure_inbox("bob")

    async def sender(n: int) -> list[Message]:
        sent = []
        for i in range(20):
            message = Message(sender=f"s{n}", recipient="bob", content=i, conversation_id=f"c{n}")
            await queue.send(message)
            sent.append(message)
            newest = await queue.get_conversation(f"c{n}", newest_first=True, limit=1)
            assert [m.id for m in newest] == [message.id], f"sender {n}, message {i}"
        return sent

    sent = await asyncio.gather(*(sender(n) for n in range(3)))

    # Paging oldest-first and newest-first, and a time window, against what was sent.
    ids = [m.id for m in sent[0]]
    page1 = await queue.get_conversation("c0", limit=8)
    page2 = await queue.get_conversation("c0", since=page1[-1].timestamp, limit=9)
    assert [m.id for m in page1] + [m.id for m in page2[1:]] == ids[:16]
    newest = await queue.get_conversation("c0", newest_first=True, limit=5)
    assert [m.id for m in newest] == ids[::-1][:5]
    window = sent[1][5].timestamp, sent[1][9].timestamp
    got = await queue.get_conversation("c1", since=window[0], until=window[1])
    assert [m.id for m in got] == [m.id for m in sent[1][5:10]]
    mine = await queue.get_agent_history("s2", limit=3)
    assert [m.id for m in mine] == [m.id for m in sent[2][:3]]


async def test_client_with_history_db_and_no_indexer_raises_the_lag_error(
    make_queue: Callable[..., Awaitable[MessageQueue]], dsn: str
) -> None:
    """A query answered from the index (not the stream) waits for the indexer."""
    queue = await make_queue(history_db=dsn)
    await queue.ensure_inbox("bob")
    await queue.send(Message(sender="a", recipient="bob", content=1, conversation_id="c"))
    with pytest.raises(HistoryLagError, match="no indexer has committed yet"):
        await queue.get_conversation("c", timeout=0.3)


async def test_run_with_a_database_in_the_file_runs_the_indexer(
    spawn: Spawn,
    config_file: Callable[[str], Path],
    make_queue: Callable[..., Awaitable[MessageQueue]],
    dsn: str,
) -> None:
    config = config_file(
        f"""
        broker: {{url: "${{AMQP_URL}}", namespace: "${{AMQP_NAMESPACE}}"}}
        history: {{db: "{dsn}"}}
        agents:
          - {{id: slow, class: "integration.probe_agents:UntilStopAgent"}}
        """
    )
    run = await spawn("run", str(config))
    await run.expect("agent(s) running")
    queue = await make_queue(history_db=dsn)
    message = Message(sender="a", recipient="slow", content="x", conversation_id="c")
    await queue.send(message)
    got = await queue.get_conversation("c", timeout=30)
    assert [m.id for m in got] == [message.id]
    run.process.send_signal(signal.SIGTERM)
    assert await run.finish() == 0, run.output


async def test_history_index_takes_the_database_from_the_file(
    spawn: Spawn, config_file: Callable[[str], Path], queue: MessageQueue, dsn: str
) -> None:
    config = config_file(
        f"""
        broker: {{url: "${{AMQP_URL}}", namespace: "${{AMQP_NAMESPACE}}"}}
        history: {{db: "{dsn}"}}
        """
    )
    await queue.ensure_inbox("bob")
    await queue.send(Message(sender="a", recipient="bob", content=1))
    indexer = await spawn("history", "index", "--config", str(config))
    await indexer.expect("indexed to offset 1 (+1 messages)")
    indexer.process.send_signal(signal.SIGINT)
    assert await indexer.finish() == 130, indexer.output
