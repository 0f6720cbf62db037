"""The plug-in interface every benchmarked implementation provides."""

from __future__ import annotations

import abc
import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar

Figures = dict[str, float]
"""Named measurements of one run, e.g. ``{"msg_per_s": 2571.0}``."""


class Implementation(abc.ABC):
    """One way of doing the workloads (raw aio-pika, amqp_agents, ...).

    Life cycle, driven by the harness for every measured run::

        impl = cls()
        await impl.open(url, prefix)      # connect; not timed
        await impl.<workload>(warm-up n)  # warm-up on the same connection; discarded
        figures = await impl.<workload>(n, ...)
        await impl.close()                # always called, also after errors/timeouts

    Every workload method sets up its own topology, starts its consumers, then
    measures, then deletes its topology before returning.  Every queue and
    exchange name must start with ``self.prefix`` and be registered with
    :meth:`track_queue` / :meth:`track_exchange` (before declaring it), so the
    harness can delete whatever is left after a failed or cancelled run.

    A workload the implementation cannot do yet raises ``NotImplementedError``;
    the harness reports it as "n/a".  Any other exception fails that run.
    Every wait inside a workload must be bounded by a timeout.
    """

    name: ClassVar[str]
    """Short name used on the command line (``--impl``) and in the reports."""

    def __init__(self) -> None:
        self.prefix = ""
        self.queue_type = "quorum"
        """The type of every durable queue this run declares (``--queue-type``)."""
        self.history_mode = "stream"
        """amqp_agents' history mode (``--history``): ``off`` declares no stream."""
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()
        self._seq = 0

    # --- life cycle -------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self, url: str, prefix: str) -> None:
        """Connect to the broker at ``url``; all names must start with ``prefix``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections.  Must not raise on a half-open instance."""

    # --- workloads --------------------------------------------------------------------
    @abc.abstractmethod
    async def pipe(self, n: int, payload: dict[str, Any]) -> Figures:
        """One producer, one consumer, ``n`` task messages.  Returns ``{"msg_per_s"}``."""

    @abc.abstractmethod
    async def rpc_seq(self, n: int) -> Figures:
        """``n`` sequential round trips.

        Returns ``{"p50_ms", "p90_ms", "p99_ms", "calls_per_s"}``."""

    @abc.abstractmethod
    async def rpc_conc(self, n: int, in_flight: int) -> Figures:
        """``n`` round trips, at most ``in_flight`` outstanding at any time.

        Returns the same keys as :meth:`rpc_seq` (headline: ``calls_per_s``, ``p99_ms``)."""

    @abc.abstractmethod
    async def fanout(self, n: int) -> Figures:
        """``n`` messages to four bound queues, two copies each.

        Returns ``{"deliveries_per_s"}``."""

    async def memory(self, n: int, agents: int) -> Figures:
        """RSS of one agent's process across ``n`` messages, and of ``agents`` agents.

        Returns e.g. ``{"agent_rss_growth_mb", "agents_start_s", "agents_rss_mb"}``.
        Optional: the default raises NotImplementedError (shown as "n/a").
        """
        raise NotImplementedError("memory")

    async def history(self, n: int, db: str) -> Figures:
        """History at ``n`` retained messages: stream scan, indexer ingest, indexed queries.

        ``db`` is a PostgreSQL URL where a database may be created (and dropped).
        Optional: the default raises NotImplementedError (shown as "n/a").
        """
        raise NotImplementedError("history")

    # --- helpers for subclasses -------------------------------------------------------
    def new_name(self, role: str) -> str:
        """A fresh name under this instance's prefix, e.g. ``bench-ab12.aio-pika.3.inbox``."""
        self._seq += 1
        return f"{self.prefix}.{self._seq}.{role}"

    def track_queue(self, name: str) -> str:
        self._check_prefix(name)
        self.queues.add(name)
        return name

    def track_exchange(self, name: str) -> str:
        self._check_prefix(name)
        self.exchanges.add(name)
        return name

    def _check_prefix(self, name: str) -> None:
        if not self.prefix or not name.startswith(self.prefix):
            raise ValueError(f"name {name!r} does not start with prefix {self.prefix!r}")


# --- figure helpers ----------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of an already sorted sequence."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    frac = pos - lo
    return sorted_values[lo] * (1.0 - frac) + sorted_values[hi] * frac


def latency_figures(latencies_s: Sequence[float], elapsed_s: float) -> Figures:
    """p50/p90/p99 in milliseconds and calls per second."""
    ordered = sorted(latencies_s)
    return {
        "p50_ms": percentile(ordered, 50) * 1000.0,
        "p90_ms": percentile(ordered, 90) * 1000.0,
        "p99_ms": percentile(ordered, 99) * 1000.0,
        "calls_per_s": len(ordered) / elapsed_s,
    }


def wait_budget(n: int, min_rate: float = 200.0, floor_s: float = 30.0) -> float:
    """Seconds to wait for ``n`` operations before declaring a run broken."""
    return floor_s + n / min_rate


class Completion:
    """Counts handled deliveries; records when the ``target``-th one finished.

    Shared by every implementation, so both sides stop their clocks the same way.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.t_last = 0.0
        self.error: BaseException | None = None
        self.done = asyncio.Event()

    def hit(self) -> None:
        """One more delivery handled."""
        self.count += 1
        if self.count == self.target:
            self.t_last = time.perf_counter()
            self.done.set()

    def fail(self, exc: BaseException) -> None:
        """A delivery failed: end the wait with this error."""
        if self.error is None:
            self.error = exc
        self.done.set()

    async def wait(self, timeout: float) -> float:
        """Wait until every delivery is handled; return the time of the last one."""
        try:
            async with asyncio.timeout(timeout):
                await self.done.wait()
        except TimeoutError:
            raise TimeoutError(
                f"only {self.count}/{self.target} deliveries handled in {timeout:.0f}s"
            ) from None
        if self.error is not None:
            raise RuntimeError("consumer failed") from self.error
        return self.t_last
