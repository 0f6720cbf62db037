"""Tools of scenario C5 (a message that kills its agent's process each time it is
delivered): an agent process restarted whenever that message ends it, as a service
manager would, and a watch on ``{ns}.dead`` that records each dead letter's reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aio_pika
from agent_process import POISONED
from ledger import Ledger
from test_faults import AgentProcess

from amqp_agents import wire

__all__ = ["CrashLoop", "dead_reason", "watch_dead_letters"]


class CrashLoop:
    """Runs ``make(n)`` (the n-th agent process) and starts the next one each time a
    process ends with :data:`POISONED`; any other exit fails :meth:`run`."""

    def __init__(self, make: Callable[[int], AgentProcess], ledger: Ledger) -> None:
        self.make = make
        self.ledger = ledger
        self.processes: list[AgentProcess] = []

    async def run(self, start_timeout: float) -> None:
        """Keep an agent process running until cancelled."""
        while True:
            process = self.make(len(self.processes))
            self.processes.append(process)
            await process.start(timeout=start_timeout)
            status = await process.exited()
            if status != POISONED:
                raise AssertionError(f"agent exited with {status}, see {process.log_path}")
            self.ledger.touch()

    def died_on(self, message_id: str) -> int:
        """How many processes ended while handling ``message_id``."""
        return sum(message_id in process.started for process in self.processes[:-1])


def dead_reason(incoming: aio_pika.abc.AbstractIncomingMessage) -> str:
    """The library's ``x-dead-reason``, or the broker's own (``x-death``)."""
    headers = incoming.headers or {}
    if (reason := headers.get(wire.H_DEAD_REASON)) is not None:
        return str(reason)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return str(deaths[0].get("reason"))
    return "?"


@asynccontextmanager
async def watch_dead_letters(url: str, ns: str, ledger: Ledger) -> AsyncIterator[dict[str, str]]:
    """Consume ``{ns}.dead`` meanwhile: each dead letter goes into the ledger, and its
    reason into the yielded dict (message id -> reason)."""
    reasons: dict[str, str] = {}
    async with await aio_pika.connect(url, timeout=10) as connection:
        channel = await connection.channel()
        dead = await channel.get_queue(wire.dead_queue_name(ns))

        async def on_dead(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
            reasons[incoming.message_id or "?"] = dead_reason(incoming)
            ledger.dead_lettered(incoming.message_id or "?")
            await incoming.ack()

        await dead.consume(on_dead)
        yield reasons
