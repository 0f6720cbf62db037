"""The ``memory`` workload's child process: RSS of amqp_agents alone, as JSON on stdout.

``python -m bench.memory agent N --url URL --namespace NS``
    One MessageQueue, one consumer agent (concurrency = prefetch 100) and a producer
    sending N pipe messages through it (window 100, as ``pipe``). RSS is sampled every
    N/20 messages; the baseline is the sample after the first 10 % (imports, buffers
    and caches warmed up), so ``agent_rss_growth_mb`` is what the steady state adds.

``python -m bench.memory agents N --url URL --namespace NS``
    One MessageQueue and N agents started concurrently (each declares its inbox and
    bindings, opens a channel and consumes). ``agents_start_s`` is the time until all
    consume; ``agents_rss_mb`` the RSS then.

A child process keeps the harness's own memory (and the aio-pika baseline's) out of
the figures. Everything the child declares is deleted before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from amqp_agents import Message, MessagePassingAgent, MessagePriority, MessageQueue, MessageType
from amqp_agents.topology import delete_namespace
from bench import spec

OP_TIMEOUT = 15.0
PAGE_BYTES = 4096


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux ``/proc/self/statm``)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * PAGE_BYTES / 1e6


async def one_agent(mq: MessageQueue, n: int) -> dict[str, Any]:
    task = spec.TaskBody.model_validate(spec.make_payload())
    handled = 0
    all_handled = asyncio.Event()

    async def handle(message: Message) -> None:
        nonlocal handled
        spec.TaskBody.model_validate(message.content)
        handled += 1
        if handled == n:
            all_handled.set()

    consumer = MessagePassingAgent("consumer", mq, concurrency=spec.PREFETCH)
    consumer.on(MessageType.NOTIFICATION)(handle)
    await consumer.start_consuming()
    sem = asyncio.Semaphore(spec.PUBLISH_WINDOW)
    pending: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    async def send() -> None:
        try:
            await mq.send(
                Message(
                    sender="producer",
                    recipient="consumer",
                    type=MessageType.NOTIFICATION,
                    priority=MessagePriority(spec.PIPE_PRIORITY),
                    content=task.model_dump(),
                )
            )
        except Exception as exc:
            failures.append(exc)
        finally:
            sem.release()

    step = max(n // 20, 1)
    samples: list[float] = []
    t0 = time.perf_counter()
    try:
        for i in range(n):
            async with asyncio.timeout(OP_TIMEOUT):
                await sem.acquire()
            if failures:
                raise failures[0]
            task_ = asyncio.create_task(send())
            pending.add(task_)
            task_.add_done_callback(pending.discard)
            if (i + 1) % step == 0:
                samples.append(rss_mb())
        async with asyncio.timeout(OP_TIMEOUT + n / 200):
            await all_handled.wait()
        samples.append(rss_mb())
    finally:
        for task_ in pending:
            task_.cancel()
        await consumer.stop()
    elapsed = time.perf_counter() - t0
    if failures:
        raise failures[0]
    base = samples[1] if len(samples) > 2 else samples[0]
    return {
        "agent_rss_mb": samples[-1],
        "agent_rss_growth_mb": samples[-1] - base,
        "agent_msg_per_s": n / elapsed,
    }


async def many_agents(mq: MessageQueue, n: int) -> dict[str, Any]:
    agents = [MessagePassingAgent(f"agent{k}", mq) for k in range(n)]
    t0 = time.perf_counter()
    async with asyncio.timeout(OP_TIMEOUT + n / 20):
        await asyncio.gather(*(agent.start_consuming() for agent in agents))
    started_s = time.perf_counter() - t0
    figures = {"agents_start_s": started_s, "agents_rss_mb": rss_mb()}
    for agent in agents:
        await agent.stop()
    return figures


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("mode", choices=("agent", "agents"))
    parser.add_argument("n", type=int)
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--queue-type", default="quorum")
    args = parser.parse_args(argv)
    mq = MessageQueue(
        args.url,
        namespace=args.namespace,
        publish_timeout_s=OP_TIMEOUT,
        connect_timeout_s=OP_TIMEOUT,
        connection_name=f"bench {args.namespace}",
        queue_type=args.queue_type,
    )
    await mq.connect()
    try:
        if args.mode == "agent":
            figures = await one_agent(mq, args.n)
        else:
            figures = await many_agents(mq, args.n)
    finally:
        channel = await mq.channel()
        await delete_namespace(channel, mq.namespace, sorted(mq.declared_queues))
        await mq.close()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
