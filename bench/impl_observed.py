"""amqp_agents with its observability on: the cost of tracing and metrics (issue 14).

The same workloads as :mod:`bench.impl_amqp_agents`, with
``instrumentation.instrument(tracing=True, metrics=True)``: spans go to an
OpenTelemetry SDK tracer provider with a batch processor (as in production) whose
exporter discards them, metrics into prometheus-client's registry. Compare it with
``amqp_agents`` side by side::

    python -m bench --impl amqp_agents,amqp_agents-obs --workloads pipe,rpc_seq

``amqp_agents-metrics`` and ``amqp_agents-tracing`` switch on one half each;
``amqp_agents-off`` neither; ``amqp_agents-sampled`` both, recording 1 % of traces.
All of these also report the client process's CPU time per message or call
(``time.process_time``, the span export thread included): on a busy machine it
varies less than the wall-clock figures. ``user_us_per_*`` is its user-mode part
alone (``getrusage``): the kernel's share (sends on the loopback interface do part
of the receiver's work in the sender's time) moves with the load, the library's own
work in user mode much less.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

from amqp_agents import instrumentation
from bench.base import Figures
from bench.impl_amqp_agents import AmqpAgentsImplementation


class _Discard(SpanExporter):
    """Exports nowhere: the bench measures making spans, not shipping them."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _user_s() -> float:
    """This process's user-mode CPU time so far (all threads)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def _cpu_figures(started: tuple[float, float], n: int, per: str) -> Figures:
    cpu_s, user_s = time.process_time() - started[0], _user_s() - started[1]
    return {f"cpu_us_per_{per}": cpu_s / n * 1e6, f"user_us_per_{per}": user_s / n * 1e6}


class ObservedAmqpAgentsImplementation(AmqpAgentsImplementation):
    name = "amqp_agents-obs"
    tracing = True
    metrics = True
    sampler: Sampler = ALWAYS_ON

    async def open(self, url: str, prefix: str) -> None:
        self._provider = TracerProvider(sampler=self.sampler)
        self._provider.add_span_processor(BatchSpanProcessor(_Discard()))
        instrumentation.instrument(
            tracing=self.tracing, metrics=self.metrics, tracer_provider=self._provider
        )
        await super().open(url, prefix)

    async def pipe(self, n: int, payload: dict[str, Any]) -> Figures:
        started = time.process_time(), _user_s()
        figures = await super().pipe(n, payload)
        return figures | _cpu_figures(started, n, "msg")

    async def rpc_seq(self, n: int) -> Figures:
        started = time.process_time(), _user_s()
        figures = await super().rpc_seq(n)
        return figures | _cpu_figures(started, n, "call")

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            instrumentation.uninstrument()
            self._provider.shutdown()


class MetricsOnlyImplementation(ObservedAmqpAgentsImplementation):
    """Metrics on, tracing off: what each half costs."""

    name = "amqp_agents-metrics"
    tracing = False


class TracingOnlyImplementation(ObservedAmqpAgentsImplementation):
    """Tracing on, metrics off."""

    name = "amqp_agents-tracing"
    metrics = False


class UnobservedImplementation(ObservedAmqpAgentsImplementation):
    """Both off: ``amqp_agents`` with the same CPU figures, for comparison."""

    name = "amqp_agents-off"
    tracing = False
    metrics = False


class SampledImplementation(ObservedAmqpAgentsImplementation):
    """Both on, 1 % of the traces recorded (``ParentBased(TraceIdRatioBased(0.01))``):
    the others still carry their context, in spans that record nothing."""

    name = "amqp_agents-sampled"
    sampler = ParentBased(TraceIdRatioBased(0.01))
