"""The trace headers the library writes and reads itself (its fast path) are exactly what
OpenTelemetry's W3C propagator writes and reads: the wire contract did not move."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import (
    TraceContextTextMapPropagator,
)
from opentelemetry.trace.span import TraceState

from amqp_agents.tracing import _GETTER, extract, inject

PROPAGATOR = TraceContextTextMapPropagator()
VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": VALID},
        {"traceparent": VALID.replace("-01", "-00")},  # not sampled
        {"traceparent": VALID, "tracestate": "vendor=a,other=b"},
        {"traceparent": VALID.encode()},  # bytes, as a foreign client may send
        {"traceparent": VALID.upper()},  # upper-case hex: invalid
        {"traceparent": " " + VALID},
        {"traceparent": VALID + "-extra"},  # version 00 with more fields: invalid
        {"traceparent": "01" + VALID[2:] + "-extra"},  # a later version: continued
        {"traceparent": "ff" + VALID[2:]},  # forbidden version
        {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"},  # zero trace id
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01"},
        {"traceparent": "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"traceparent": "garbage"},
        {"traceparent": 12345},
    ],
    ids=lambda headers: repr(headers.get("traceparent"))[:24],
)
def test_extract_reads_what_the_propagator_reads(headers: dict[str, Any]) -> None:
    ours = trace.get_current_span(extract(headers)).get_span_context()
    theirs = trace.get_current_span(PROPAGATOR.extract(headers, getter=_GETTER)).get_span_context()
    assert ours == theirs
    assert (ours.is_remote, ours.trace_flags, ours.trace_state) == (
        theirs.is_remote,
        theirs.trace_flags,
        theirs.trace_state,
    )


@pytest.mark.parametrize("sampler", [ALWAYS_ON, ALWAYS_OFF], ids=["recorded", "not sampled"])
@pytest.mark.parametrize("state", [None, TraceState([("vendor", "a")])], ids=["", "tracestate"])
def test_inject_writes_what_the_propagator_writes(
    sampler: Sampler, state: TraceState | None
) -> None:
    tracer = TracerProvider(sampler=sampler).get_tracer("test")
    parent = NonRecordingSpan(
        SpanContext(
            0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, True, TraceFlags(1), state
        )
    )
    span = tracer.start_span("send x", context=trace.set_span_in_context(parent))
    ours: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    inject(span, ours)
    PROPAGATOR.inject(theirs, context=trace.set_span_in_context(span))
    span.end()
    assert ours == theirs
    assert "traceparent" in ours


def test_inject_writes_nothing_for_an_invalid_span() -> None:
    headers: dict[str, Any] = {}
    inject(trace.INVALID_SPAN, headers)
    assert headers == {}
