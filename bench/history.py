"""The ``history`` workload's child process: history at scale, as JSON on stdout.

``python -m bench.history N --url URL --namespace NS --db POSTGRES_URL``

1. Fills ``{NS}.history`` with N messages of ~300 bytes (the pipe payload), published
   straight to the stream with confirms: the stream as a busy namespace leaves it.
   Message i belongs to conversation ``i % (N / 10)``: 10 messages per conversation,
   spread over the whole stream as interleaved conversations are.
2. Stream scan: one ``get_conversation`` without an index (public API, no bounds), so
   every retained entry is read: ``scan_msg_per_s`` = entries read / seconds, and
   ``scan_client_cpu_us_per_msg`` = this process's CPU time per entry (what the client
   costs whatever else the machine is doing).
3. Indexer: ``amqp-agents history index`` as its own process, from an empty database
   until it has committed all N: ``ingest_msg_per_s``, and its CPU time per message
   (``indexer_cpu_us_per_msg``, from its start, imports included: what it costs
   whatever else the machine is doing); its RSS is sampled at every tenth of N,
   ``indexer_rss_growth_mb`` counts from the sample at 20 %.
4. Indexed queries, the indexer still running: ``HISTORY_QUERIES`` ``conversation()``
   calls for random conversations with read-your-writes (a marker each, waiting for
   the indexer to pass it): ``query_p50_ms``, ``query_p99_ms``; and the same without
   the wait (``query_nowait_p50_ms``), i.e. the SQL alone.

The database ``bench_hist_<random>`` is created on the server of ``--db`` and dropped at
the end; the namespace is deleted at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel

from amqp_agents import Message, MessageQueue, MessageType, wire
from amqp_agents.history import ScanProgress
from amqp_agents.history_index import HistoryIndex
from amqp_agents.publish import properties
from amqp_agents.topology import delete_namespace
from bench import spec
from bench.base import percentile

HISTORY_QUERIES = 500
CONVERSATION_SIZE = 10
FILL_WINDOW = 1000
PAGE_BYTES = 4096


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def fill(channel: AbstractChannel, namespace: str, n: int) -> float:
    """Append n messages to the stream; return messages per second."""
    name = wire.history_name(namespace)
    underlay = await channel.get_underlay_channel()
    payload = spec.make_payload()
    conversations = max(n // CONVERSATION_SIZE, 1)
    pending: list[Any] = []
    report_at = step = max(n // 10, 1)
    t0 = time.perf_counter()
    for i in range(n):
        message = Message(
            sender=f"agent{i % 50}",
            recipient=f"agent{(i + 1) % 50}",
            type=MessageType.TASK,
            content=payload,
            conversation_id=f"c{i % conversations}",
        )
        out = wire.encode(message)
        pending.append(
            underlay.basic_publish(
                out.body, exchange="", routing_key=name, properties=properties(out)
            )
        )
        if len(pending) >= FILL_WINDOW:
            await asyncio.gather(*pending)
            pending.clear()
            if i + 1 >= report_at:
                log(f"  filled {i + 1:,}")
                report_at += step
    await asyncio.gather(*pending)
    return n / (time.perf_counter() - t0)


async def scan(mq: MessageQueue, conversations: int) -> dict[str, float]:
    reports: list[ScanProgress] = []
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    found = await mq.get_conversation(
        f"c{conversations // 2}", timeout=None, progress=reports.append
    )
    elapsed = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    if len(found) != CONVERSATION_SIZE:
        raise RuntimeError(f"scan found {len(found)} messages, expected {CONVERSATION_SIZE}")
    return {
        "scan_msg_per_s": reports[-1].read / elapsed,
        "scan_s": elapsed,
        "scan_client_cpu_us_per_msg": cpu_s / reports[-1].read * 1e6,
    }


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used since it started."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES / 1e6


async def ingest(indexer: asyncio.subprocess.Process, n: int, t0: float) -> dict[str, float]:
    """Follow the indexer's progress lines until it committed all n; sample its RSS."""
    assert indexer.stdout is not None
    samples: dict[int, float] = {}
    while True:
        line = (await indexer.stdout.readline()).decode()
        if not line:
            raise RuntimeError("the indexer exited")
        if not line.startswith("indexed to offset"):
            continue
        offset = int(line.split()[3])
        decile = min(offset * 10 // n, 10)
        if decile not in samples:
            samples[decile] = rss_mb(indexer.pid)
            log(f"  indexed {offset:,} (RSS {samples[decile]:.1f} MB)")
        if offset >= n:
            elapsed = time.perf_counter() - t0
            final = rss_mb(indexer.pid)
            base = samples.get(2, min(samples.values()))
            return {
                "ingest_msg_per_s": n / elapsed,
                "indexer_cpu_us_per_msg": process_cpu_s(indexer.pid) / n * 1e6,
                "indexer_rss_mb": final,
                "indexer_rss_growth_mb": final - base,
            }


async def queries(index: HistoryIndex, conversations: int) -> dict[str, float]:
    rng = random.Random(7)
    figures: dict[str, float] = {}
    as_it_is = HistoryIndex(index.pool, index.namespace)  # no marker, no wait
    for label, view in (("query", index), ("query_nowait", as_it_is)):
        latencies: list[float] = []
        for _ in range(HISTORY_QUERIES):
            conversation = f"c{rng.randrange(conversations)}"
            t0 = time.perf_counter()
            got = await view.conversation(conversation)
            latencies.append(time.perf_counter() - t0)
            if len(got) != CONVERSATION_SIZE:
                raise RuntimeError(f"{conversation}: {len(got)} messages")
        latencies.sort()
        figures[f"{label}_p50_ms"] = percentile(latencies, 50) * 1000
        if label == "query":
            figures["query_p99_ms"] = percentile(latencies, 99) * 1000
    return figures


async def run(n: int, url: str, namespace: str, db: str) -> dict[str, float]:
    database = f"bench_hist_{uuid.uuid4().hex[:10]}"
    dsn = db.rsplit("/", 1)[0] + "/" + database
    admin = await asyncpg.connect(db)
    await admin.execute(f'CREATE DATABASE "{database}"')
    mq = MessageQueue(url, namespace=namespace, connection_name=f"bench {namespace}")
    await mq.connect()
    connection = await aio_pika.connect(url)
    indexer: asyncio.subprocess.Process | None = None
    conversations = max(n // CONVERSATION_SIZE, 1)
    try:
        channel = await connection.channel(publisher_confirms=True)
        figures = {"retained_messages": float(n)}
        log(f"history: filling {namespace}.history with {n:,} messages")
        figures["fill_msg_per_s"] = await fill(channel, namespace, n)
        log("history: stream scan")
        figures |= await scan(mq, conversations)
        log(f"  {figures['scan_msg_per_s']:,.0f} msg/s; indexing")
        t0 = time.perf_counter()
        indexer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "amqp_agents",
            "history",
            "index",
            "--url",
            url,
            "--namespace",
            namespace,
            "--db",
            dsn,
            stdout=asyncio.subprocess.PIPE,
        )
        figures |= await ingest(indexer, n, t0)
        log(f"  {figures['ingest_msg_per_s']:,.0f} msg/s; queries")
        index = await HistoryIndex.open(dsn, namespace, channel, wait_s=30)
        try:
            figures |= await queries(index, conversations)
        finally:
            await index.close()
        return figures
    finally:
        if indexer is not None and indexer.returncode is None:
            indexer.kill()
            await indexer.wait()
        await connection.close()
        cleanup = await mq.channel()
        await delete_namespace(cleanup, namespace, sorted(mq.declared_queues))
        await mq.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history")
    parser.add_argument("n", type=int)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--db", required=True, help="a PostgreSQL URL; a database is made there")
    args = parser.parse_args(argv)
    print(json.dumps(await run(args.n, args.url, args.namespace, args.db)))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
