"""Reading history from the stream: since, until and limit bound how much is READ.

Each test counts the stream entries the scan examined (its progress report), not only
what it returned: a scan that reads the whole stream and filters afterwards returns the
same messages but is what made queries slow.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from amqp_agents import Message, MessageQueue, MessageType
from amqp_agents.errors import HistoryTimeoutError
from amqp_agents.history import HistoryQuery, ScanProgress, scan_history

from .conftest import Spawn
from .history_support import append_to_history

BASE = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def entry(i: int, conversation: str, *, sender: str = "alice") -> Message:
    return Message(
        sender=sender,
        recipient="bob",
        type=MessageType.NOTIFICATION,
        content={"i": i},
        conversation_id=conversation,
        timestamp=BASE + timedelta(seconds=i),
    )


@pytest.fixture
async def scan_channel(
    amqp_url: str, connect_raw: Callable[[str], Awaitable[Any]]
) -> AsyncIterator[AbstractChannel]:
    connection = await connect_raw(amqp_url)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


async def test_limit_ends_the_read_at_the_limit_th_match(
    queue: MessageQueue, raw_channel: AbstractChannel
) -> None:
    # Conversations a and b alternate: the 10th "a" is the 19th entry.
    entries = [entry(i, "a" if i % 2 == 0 else "b") for i in range(2000)]
    await append_to_history(raw_channel, queue.namespace, entries)
    reports: list[ScanProgress] = []

    got = await queue.get_conversation("a", limit=10, progress=reports.append)

    assert [m.content["i"] for m in got] == list(range(0, 20, 2))
    assert reports[-1].done
    assert reports[-1].read == 19, "the scan stops at the 10th match"


async def test_newest_first_limit_returns_the_last_matches_newest_first(
    queue: MessageQueue, raw_channel: AbstractChannel
) -> None:
    await append_to_history(raw_channel, queue.namespace, [entry(i, "a") for i in range(50)])

    got = await queue.get_conversation("a", limit=3, newest_first=True)

    assert [m.content["i"] for m in got] == [49, 48, 47]


async def test_until_ends_the_read_past_until_plus_the_clock_skew(
    queue: MessageQueue, raw_channel: AbstractChannel, scan_channel: AbstractChannel
) -> None:
    # One entry per second of message time: until + 10 s of skew is passed at entry 110.
    await append_to_history(raw_channel, queue.namespace, [entry(i, "a") for i in range(1000)])
    reports: list[ScanProgress] = []
    query = HistoryQuery(conversation_id="a", until=BASE + timedelta(seconds=99.5))

    got = await scan_history(
        scan_channel,
        queue.namespace,
        query,
        progress=reports.append,
        clock_skew=timedelta(seconds=10),
    )

    assert [m.content["i"] for m in got] == list(range(100))
    assert reports[-1].read == 111, "entries 0..110: the first one past until + skew ends it"


async def test_since_starts_the_read_at_that_time_not_at_the_first_entry(
    queue: MessageQueue, raw_channel: AbstractChannel, scan_channel: AbstractChannel
) -> None:
    old = [entry(i, "a") for i in range(2000)]
    await append_to_history(raw_channel, queue.namespace, old)
    # An AMQP timestamp (the start of a time-bounded read) has whole seconds: `since`
    # must fall in a later second than the old entries' arrival, so wait for the next one.
    await asyncio.sleep(1.05 - datetime.now(UTC).microsecond / 1e6)
    since = datetime.now(UTC)
    new = [Message(sender="alice", recipient="bob", content=i) for i in range(50)]
    await append_to_history(raw_channel, queue.namespace, new)
    reports: list[ScanProgress] = []

    got = await scan_history(
        scan_channel,
        queue.namespace,
        HistoryQuery(since=since),
        progress=reports.append,
        clock_skew=timedelta(0),
    )

    assert [m.id for m in got] == [m.id for m in new]
    # The read starts at the chunk holding `since`: at most one chunk of old entries.
    assert 51 <= reports[-1].read < 1000, reports[-1]


async def test_headers_screen_out_entries_without_decoding_them(
    queue: MessageQueue, raw_channel: AbstractChannel
) -> None:
    entries = [entry(i, "wanted" if i % 100 == 0 else "other") for i in range(1000)]
    await append_to_history(raw_channel, queue.namespace, entries)
    reports: list[ScanProgress] = []

    got = await queue.get_conversation("wanted", progress=reports.append)

    assert len(got) == 10
    assert reports[-1].read == 1001, "every entry and the query's marker"
    assert reports[-1].decoded == 10, "only entries whose headers match are decoded"


async def test_agent_history_screens_on_sender_and_recipient(
    queue: MessageQueue, raw_channel: AbstractChannel
) -> None:
    entries = [entry(i, "c", sender="carol" if i % 50 == 0 else "alice") for i in range(500)]
    await append_to_history(raw_channel, queue.namespace, entries)
    reports: list[ScanProgress] = []

    got = await queue.get_agent_history("carol", progress=reports.append)

    assert [m.content["i"] for m in got] == list(range(0, 500, 50))
    assert reports[-1].decoded == 10


async def test_a_scan_past_its_timeout_raises_a_typed_error(
    queue: MessageQueue, raw_channel: AbstractChannel
) -> None:
    await append_to_history(raw_channel, queue.namespace, [entry(i, "a") for i in range(200)])

    with pytest.raises(HistoryTimeoutError) as info:
        await queue.get_conversation("a", timeout=0.001)

    assert isinstance(info.value, TimeoutError)


# -- amqp-agents history --follow -------------------------------------------------------


@pytest.mark.parametrize("end", ["limit", "ctrl-c", "timeout"])
async def test_follow_prints_each_new_match_as_it_is_sent(
    queue: MessageQueue, spawn: Spawn, raw_channel: AbstractChannel, end: str
) -> None:
    await append_to_history(raw_channel, queue.namespace, [entry(0, "a")])  # before: not shown
    stop = {"limit": ["--limit", "2"], "ctrl-c": [], "timeout": ["--timeout", "3"]}[end]
    follow = await spawn("history", "--conversation", "a", "--follow", *stop)
    await follow.expect("content")  # the header: the read is registered
    await queue.ensure_inbox("bob")
    for i, conversation in ((1, "b"), (2, "a"), (3, "a")):
        await queue.send(
            Message(sender="alice", recipient="bob", content={"i": i}, conversation_id=conversation)
        )
    await follow.expect('{"i": 2}')
    await follow.expect('{"i": 3}')
    if end == "ctrl-c":
        follow.process.send_signal(signal.SIGINT)
    status = await follow.finish()
    assert status == (130 if end == "ctrl-c" else 0), follow.output
    shown = [line for line in follow.output.splitlines() if '{"i"' in line]
    assert len(shown) == 2 and all("alice" in line for line in shown), follow.output


async def test_follow_with_since_starts_in_the_past(
    queue: MessageQueue, spawn: Spawn, raw_channel: AbstractChannel
) -> None:
    await append_to_history(raw_channel, queue.namespace, [entry(i, "a") for i in range(5)])
    since = (BASE + timedelta(seconds=3)).isoformat()
    follow = await spawn(
        "history", "--conversation", "a", "--follow", "--since", since, "--limit", "2"
    )
    assert await follow.finish() == 0, follow.output
    shown = [line for line in follow.output.splitlines() if '{"i"' in line]
    assert [line.split()[-1] for line in shown] == ["3}", "4}"], follow.output
