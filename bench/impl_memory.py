"""amqp_agents on ``memory://``: the library's own cost, without a broker or a socket.

The same workloads as :mod:`bench.impl_amqp_agents`, line for line (this is a subclass
of it), on an in-process broker of the run's own (``memory://<prefix>``): every send
is still encoded, published with ``mandatory`` and confirmed, every delivery decoded,
admitted and acknowledged, through aio-pika's objects; only the broker and the wire
are gone. Set beside ``amqp_agents``, it shows how much of a figure is the library and
how much the broker and the network. ``memory`` and ``history`` (child processes that
need a broker they can reach) are n/a.
"""

from __future__ import annotations

from typing import ClassVar

from amqp_agents import memory
from bench.base import Figures
from bench.impl_amqp_agents import AmqpAgentsImplementation


class MemoryImplementation(AmqpAgentsImplementation):
    name = "memory"
    needs_broker: ClassVar[bool] = False
    """The harness need not reach RabbitMQ for this implementation."""

    async def open(self, url: str, prefix: str) -> None:
        await super().open(f"memory://{prefix}", prefix)

    async def close(self) -> None:
        await super().close()
        memory.forget(self.prefix)

    def track_queue(self, name: str) -> str:
        return name  # nothing of it is on any broker the harness could sweep

    def track_exchange(self, name: str) -> str:
        return name

    async def memory(self, n: int, agents: int) -> Figures:
        raise NotImplementedError("memory (child processes cannot share memory://)")

    async def history(self, n: int, db: str) -> Figures:
        raise NotImplementedError("history (child processes cannot share memory://)")
