"""An agent in a process of its own: scenario 7 (the agent's process dies mid-handler)
and the cluster scenarios C4 (a process starts while a node is down) and C5 (a message
that kills its agent's process).

    python agent_process.py URL NAMESPACE AGENT_ID [--concurrency N] [--dedup-window N]
                            [--work-ms M] [--queue-type T] [--exit-on MESSAGE_ID]

Each event is one line on stdout, flushed at once: a line written before a SIGKILL is
in the pipe, so the parent reading it misses nothing::

    ready                 consuming
    start <message id>    the handler began
    effect <message id>   the handler's side effect happened; it returns, then the ack

The handler "works" ``--work-ms`` between the two, so a kill finds handlers in flight.
``--exit-on``: the handler of that message ends the process at once (``os._exit``,
exit status :data:`POISONED`) after its ``start`` line, every time it is delivered: a
message that crashes its agent. SIGTERM stops the agent gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from amqp_agents import Message, MessageQueue, MessageType, wire
from amqp_agents.agent import MessagePassingAgent

POISONED = 86
"""Exit status of a process ended by the ``--exit-on`` message."""


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    async with MessageQueue(
        args.url,
        namespace=args.namespace,
        connection_name=f"agent_process {args.agent_id}",
        queue_type=args.queue_type,
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
            if message.id == args.exit_on:
                os._exit(POISONED)  # a crash: no ack, no clean-up, the link just drops
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
    parser.add_argument("--queue-type", default=wire.DEFAULT_QUEUE_TYPE, choices=wire.QUEUE_TYPES)
    parser.add_argument("--exit-on", default=None, help="a message id that ends the process")
    asyncio.run(main(parser.parse_args()))
