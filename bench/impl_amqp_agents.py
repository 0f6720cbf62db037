"""The workloads written against the amqp_agents library API.

Stub: to be written against the library.  Until then every workload raises
``NotImplementedError`` and the harness reports it as "n/a".

Follow the parity rules in ``bench/README.md`` and the constants in
``bench/spec.py`` (same routing keys, priorities, prefetch, confirm window,
persistence, durable ``x-max-priority`` inboxes, pydantic decode before ack, one
connection per measured run).  Register every queue/exchange name with
``self.track_queue`` / ``self.track_exchange``; names must start with ``self.prefix``.
"""

from __future__ import annotations

from typing import Any

from bench.base import Figures, Implementation


class AmqpAgentsImplementation(Implementation):
    name = "amqp_agents"

    async def open(self, url: str, prefix: str) -> None:
        self.prefix = prefix

    async def close(self) -> None:
        return None

    async def pipe(self, n: int, payload: dict[str, Any]) -> Figures:
        raise NotImplementedError("pipe")

    async def rpc_seq(self, n: int) -> Figures:
        raise NotImplementedError("rpc_seq")

    async def rpc_conc(self, n: int, in_flight: int) -> Figures:
        raise NotImplementedError("rpc_conc")

    async def fanout(self, n: int) -> Figures:
        raise NotImplementedError("fanout")
