"""An agent in a process of its own, for scenario 7 (the agent's process dies mid-handler).

    python agent_process.py URL NAMESPACE AGENT_ID [--concurrency N] [--dedup-window N]
                            [--work-ms M]

Each event is one line on stdout, flushed at once: a line written before a SIGKILL is
in the pipe, so the parent reading it misses nothing::

    ready                 consuming
    start <message id>    the handler began
    effect <message id>   the handler's side effect happened; it returns, then the ack

The handler "works" ``--work-ms`` between the two, so a kill finds handlers in flight.
SIGTERM stops the agent gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from amqp_agents import Message, MessageQueue, MessageType
from amqp_agents.agent import MessagePassingAgent


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    async with MessageQueue(
        args.url, namespace=args.namespace, connection_name=f"agent_process {args.agent_id}"
    ) as queue:
        agent = MessagePassingAgent(
            args.agent_id,
            queue,
            concurrency=args.concurrency,
            dedup_window=args.dedup_window,
        )

        @agent.on(MessageType.NOTIFICATION)
        async def handle(message: Message) -> None:
            emit(f"start {message.id}")
            await asyncio.sleep(args.work_ms / 1000)  # the handler's work
            emit(f"effect {message.id}")

        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await agent.start_consuming()
        emit("ready")
        await stop.wait()
        await agent.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("namespace")
    parser.add_argument("agent_id")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dedup-window", type=int, default=0)
    parser.add_argument("--work-ms", type=float, default=20.0)
    asyncio.run(main(parser.parse_args()))
