"""The instrumentation hooks alone, without a broker: CPU per message of tracing and metrics.

``python -m bench.hooks [N]`` runs what one pipe message makes the hooks do (the
``publishing`` hook of its send, the ``handling`` hook of its delivery) N times per
configuration and prints the CPU time (``time.process_time``) per message, next to
the *floor*: the same two spans (kinds, attribute counts) started and ended on the
OpenTelemetry SDK directly, with the same batch processor. What tracing costs above
the floor is the library's; the floor is the SDK's. A workload of fixed size, so it
also serves for instruction counts (``valgrind --tool=callgrind``, N1 and N2, the
difference divided by N2 - N1) on a machine too busy for clock figures.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from pamqp.commands import Basic

from amqp_agents import Message, MessageType, instrumentation


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider(sampler: Sampler = ALWAYS_ON) -> TracerProvider:
    provider = TracerProvider(sampler=sampler)
    # A queue that never drops: a dropped span would cost less than a kept one.
    provider.add_span_processor(BatchSpanProcessor(_Discard(), max_queue_size=1 << 20))
    return provider


MESSAGE = Message(
    sender="producer-1",
    recipient="consumer-1",
    type=MessageType.NOTIFICATION,
    content={"n": 1},
    conversation_id="conversation-1",
)


def one_message() -> None:
    """The hooks of one pipe message: its publish, then its handling."""
    properties = Basic.Properties(
        message_id=MESSAGE.id,
        message_type="notification",
        headers={"x-sender": "producer-1", "x-conversation-id": "conversation-1"},
    )
    with instrumentation.publishing("ns", "consumer-1", properties):
        pass
    incoming: Any = SimpleNamespace(
        headers=dict(properties.headers or {}),
        exchange="ns",
        routing_key="consumer-1",
        type="notification",
        message_id=MESSAGE.id,
    )
    with instrumentation.handling("consumer-1", incoming, MESSAGE):
        pass


def floor(provider: TracerProvider) -> Callable[[], None]:
    """Two bare SDK spans as a message makes them (8 and 9 attributes)."""
    tracer = provider.get_tracer("floor")
    attributes = {f"a{i}": "value" for i in range(8)}

    def two_spans() -> None:
        tracer.start_span("send ns", kind=SpanKind.PRODUCER, attributes=dict(attributes)).end()
        tracer.start_span(
            "process ns", kind=SpanKind.CONSUMER, attributes=dict(attributes, a8=1)
        ).end()

    return two_spans


def configurations() -> dict[str, Callable[[], None]]:
    """Name -> what one message costs in that configuration (switches the hooks)."""
    recorded, sampled = _provider(), _provider(ParentBased(TraceIdRatioBased(0.01)))

    def hooks(**options: Any) -> Callable[[], None]:
        def switch_then_run() -> None:
            instrumentation.instrument(**options)
            one_message()

        return switch_then_run

    return {
        "floor (2 SDK spans)": floor(recorded),
        "off": hooks(),
        "metrics": hooks(metrics=True),
        "tracing": hooks(tracing=True, tracer_provider=recorded),
        "tracing+metrics": hooks(tracing=True, metrics=True, tracer_provider=recorded),
        "tracing 1%+metrics": hooks(tracing=True, metrics=True, tracer_provider=sampled),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    n = int(args[0]) if args else 20_000
    only = args[1] if len(args) > 1 else None
    for name, setup in configurations().items():
        if only is not None and name != only:
            continue
        setup()  # switches the hooks on as configured, and warms up
        run = setup if name.startswith("floor") else one_message
        started = time.process_time()
        for _ in range(n):
            run()
        cpu_us = (time.process_time() - started) / n * 1e6
        print(f"{name:22s} {cpu_us:8.1f} us CPU per message", flush=True)
    instrumentation.uninstrument()
    return 0


if __name__ == "__main__":
    sys.exit(main())
