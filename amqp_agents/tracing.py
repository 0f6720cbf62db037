"""OpenTelemetry spans for messages, and W3C trace context in their headers (extra ``otel``).

One trace follows the work of a request across agents: the publish of a message is a
PRODUCER span whose context travels in the ``traceparent``/``tracestate`` headers
(docs/wire-format.md, "Trace context"); the agent that handles it opens a CONSUMER
span, a child of that context, and whatever the handler sends (replies, sub-tasks,
a retry, a dead letter) is a child of the CONSUMER span. ``send_task`` is a CLIENT
span around the request's publish that lasts until its reply arrives. A delivery
from any client that sets ``traceparent`` continues that client's trace.

Names and attributes follow OpenTelemetry's messaging semantic conventions
(``send {exchange}``, ``process {exchange}``; ``messaging.*``), plus the library's
own (``amqp_agents.*``): the agent, the message type, the attempt.

Only :mod:`amqp_agents.instrumentation` imports this module, when tracing is asked for.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .message import MessageType
from .wire import (
    H_ATTEMPT,
    H_CONVERSATION,
    H_SENDER,
    H_TRACEPARENT,
    H_TRACESTATE,
    header_text,
)

if TYPE_CHECKING:  # pragma: no cover
    from pamqp.commands import Basic

    from .inbound import Inbound
    from .message import Message

SYSTEM = "rabbitmq"
"""``messaging.system``."""

_PROPAGATOR = TraceContextTextMapPropagator()
"""W3C trace context only: the wire contract names these two headers, nothing else."""


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads trace headers as text, whatever a foreign client put there."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [header_text(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()

# Per span, the SDK's own work (ids, sampler, attributes, the processor) is the floor;
# what is ours is kept to a few dict operations: enum members and the empty context
# are looked up once, and the common case of the W3C header (version 00, no
# tracestate) is written and read here directly, the propagator doing the rest.
_PRODUCER = SpanKind.PRODUCER
_CONSUMER = SpanKind.CONSUMER
_CLIENT = SpanKind.CLIENT
_ROOT = Context()
"""No parent: what the propagator returns for a delivery without trace headers."""
_CANONICAL = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""A ``traceparent`` of version 00, exactly as the propagator writes it."""


def extract(headers: Mapping[str, Any]) -> Context:
    """The trace context ``headers`` carry, as ``TraceContextTextMapPropagator`` reads it
    (an empty context when there is none or it is malformed)."""
    raw = headers.get(H_TRACEPARENT)
    if raw is None:
        return _ROOT
    if type(raw) is str and H_TRACESTATE not in headers:
        match = _CANONICAL.fullmatch(raw)
        if match is not None:
            trace_id = int(match[1], 16)
            span_id = int(match[2], 16)
            if trace_id and span_id:
                remote = SpanContext(trace_id, span_id, True, TraceFlags(int(match[3], 16)))
                return trace.set_span_in_context(NonRecordingSpan(remote), _ROOT)
    return _PROPAGATOR.extract(headers, getter=_GETTER)


def inject(span: Span, headers: MutableMapping[str, Any]) -> None:
    """Put ``span``'s context into ``headers`` as ``TraceContextTextMapPropagator``
    writes it (``traceparent``, and ``tracestate`` when it has one)."""
    context = span.get_span_context()
    if not context.is_valid:
        return
    headers[H_TRACEPARENT] = (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    if context.trace_state:
        headers[H_TRACESTATE] = context.trace_state.to_header()


def _type_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


class Tracing:
    """Starts and ends the library's spans on ``tracer_provider`` (default: the global)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("amqp_agents", tracer_provider=tracer_provider)

    def producer(
        self,
        exchange: str,
        routing_key: str,
        properties: Basic.Properties,
        headers: MutableMapping[str, Any],
    ) -> Span:
        """Start the PRODUCER span of a publish and put its context into ``headers``.

        Its parent is the current span; without one (a copy published outside any
        handler, e.g. a dead letter at admission), the context the headers already
        carry, so a copy stays in its original's trace.
        """
        parent = None
        if H_TRACEPARENT in headers and not trace.get_current_span().get_span_context().is_valid:
            parent = extract(headers)
        destination = exchange or "amq.default"
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.destination.name": destination,
            "messaging.rabbitmq.destination.routing_key": routing_key,
            "messaging.message.id": properties.message_id or "",
            "amqp_agents.agent": _type_of(headers.get(H_SENDER)),
            "amqp_agents.message.type": _type_of(properties.message_type),
        }
        if isinstance(conversation := headers.get(H_CONVERSATION), str):
            attributes["messaging.message.conversation_id"] = conversation
        if isinstance(attempt := headers.get(H_ATTEMPT), int):
            attributes["amqp_agents.attempt"] = attempt
        span = self._tracer.start_span(
            f"send {destination}", context=parent, kind=_PRODUCER, attributes=attributes
        )
        headers.pop(H_TRACESTATE, None)  # a copy's old one; inject sets the span's own
        inject(span, headers)
        return span

    def consumer(
        self, agent_id: str, incoming: Inbound, message: Message, attempt: int
    ) -> tuple[Span, object]:
        """Start the CONSUMER span of a handler run, a child of the sender's context,
        and make it current; returns the span and the token :meth:`detach` takes."""
        parent = extract(incoming.headers or {})
        destination = incoming.exchange or "amq.default"
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": destination,
            "messaging.rabbitmq.destination.routing_key": incoming.routing_key or "",
            "messaging.message.id": message.id,
            "amqp_agents.agent": agent_id,
            "amqp_agents.sender": message.sender,
            "amqp_agents.message.type": message.type.value,
            "amqp_agents.attempt": attempt,
        }
        if message.conversation_id:
            attributes["messaging.message.conversation_id"] = message.conversation_id
        span = self._tracer.start_span(
            f"process {destination}", context=parent, kind=_CONSUMER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token

    def client(
        self, message: Message, reply: asyncio.Future[Message], timeout_s: float
    ) -> _ClientSpan:
        """A CLIENT span, current while the request is published, that ends when
        ``reply`` is resolved (an ERROR reply marks it failed) or ``timeout_s`` later."""
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.message.id": message.id,
            "amqp_agents.agent": message.sender,
            "amqp_agents.recipient": message.recipient or "",
            "amqp_agents.message.type": message.type.value,
        }
        if message.conversation_id:
            attributes["messaging.message.conversation_id"] = message.conversation_id
        span = self._tracer.start_span(
            f"{message.type.value} {message.recipient or 'routed'}",
            kind=_CLIENT,
            attributes=attributes,
        )
        return _ClientSpan(self, span, reply, timeout_s)

    def _timed_out(self, span: Span, timeout_s: float) -> None:
        if span.is_recording():
            span.set_status(Status(StatusCode.ERROR, f"no reply within {timeout_s}s"))
            span.end()

    @staticmethod
    def record_error(span: Span, error: BaseException) -> None:
        """Mark ``span`` failed by ``error``."""
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def end(self, span: Span, error: BaseException | None) -> None:
        """End ``span``, failed if ``error`` is given (a cancellation is not a failure)."""
        if error is not None and not isinstance(error, asyncio.CancelledError):
            self.record_error(span, error)
        span.end()

    @staticmethod
    def detach(token: Any) -> None:
        """Make current again what was before :meth:`consumer`."""
        otel_context.detach(token)

    @staticmethod
    def trace_id() -> str | None:
        """The current span's trace id (32 hex digits), or None."""
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None


class _ClientSpan:
    """What :meth:`Tracing.client` returns: the span is current inside the ``with``;
    after it, the span waits for the reply (a plain class: a generator-based context
    manager costs more per call)."""

    __slots__ = ("_reply", "_span", "_timeout_s", "_token", "_tracing")

    def __init__(
        self, tracing: Tracing, span: Span, reply: asyncio.Future[Message], timeout_s: float
    ) -> None:
        self._tracing = tracing
        self._span = span
        self._reply = reply
        self._timeout_s = timeout_s
        self._token: Any = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        otel_context.detach(self._token)
        span, tracing, timeout_s = self._span, self._tracing, self._timeout_s
        if error is not None:
            tracing.end(span, error)
            return
        timer = asyncio.get_running_loop().call_later(
            timeout_s, tracing._timed_out, span, timeout_s
        )

        def on_reply(future: asyncio.Future[Message]) -> None:
            timer.cancel()
            if not span.is_recording():
                return
            if future.cancelled():
                span.set_status(Status(StatusCode.ERROR, "cancelled"))
            elif (failure := future.exception()) is not None:
                tracing.record_error(span, failure)
            elif future.result().type is MessageType.ERROR:
                content = future.result().content
                text = content.get("error_type") if isinstance(content, dict) else None
                span.set_status(Status(StatusCode.ERROR, f"remote error: {text or content}"))
            span.end()

        self._reply.add_done_callback(on_reply)
