"""The hooks the hot paths call, and whoever listens to them: traces, metrics, log context.

The few places of the library that matter to an operator each call one hook here::

    Publisher.publish        publishing(exchange, routing_key, properties)   a PRODUCER span
                             (trace headers injected), a sent counter, the confirm latency
    agent, per delivery      handling(agent_id, incoming, message)           a CONSUMER span,
                             child of the sender's; in-flight gauge, handler duration
    outcomes.handler_failed  failed(error)                                   failed counter
    redelivery               retried(...) / dead_lettered(...)               counters
    RpcClient.request        requesting(message, future, timeout_s)          a CLIENT span
                             that lasts until the reply (or the timeout)
    BrokerClient.connect     connected(connection)                           state gauge,
                             reconnect counter

Nothing listens until :func:`instrument` is called: each hook then costs one global
lookup and returns a shared do-nothing context manager, so the library pays nothing
for what nobody asked for. The listeners live in their own modules, imported only
when asked for: :mod:`amqp_agents.tracing` (OpenTelemetry, extra ``otel``),
:mod:`amqp_agents.metrics` (prometheus-client, extra ``metrics``) and the log context
that :mod:`amqp_agents.logs` writes into JSON lines.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .message import MessageType
from .wire import H_ATTEMPT, H_DEAD_REASON, attempt_of

if TYPE_CHECKING:  # pragma: no cover - types only; the modules load on instrument()
    import asyncio

    from aio_pika.abc import AbstractRobustConnection
    from pamqp.commands import Basic

    from .inbound import Inbound
    from .message import Message
    from .metrics import Metrics
    from .tracing import Tracing

__all__ = [
    "HandlingContext",
    "connected",
    "current_handling",
    "dead_lettered",
    "failed",
    "handling",
    "instrument",
    "is_instrumented",
    "publishing",
    "requesting",
    "retried",
    "trace_id",
    "uninstrument",
]

_NOTHING = contextlib.nullcontext()
"""What a hook returns while nothing listens (reusable: it keeps no state)."""

_TYPES = frozenset(t.value for t in MessageType)


def type_label(value: Any) -> str:
    """A message type as a metric label: one of the contract's, else ``other`` (a
    foreign client's type must not make a label take unbounded values)."""
    return value if value in _TYPES else "other"


@dataclass(slots=True)
class HandlingContext:
    """What is being handled right now (in this task): for log lines and the hooks."""

    agent: str
    message_id: str
    conversation_id: str | None
    message_type: str
    attempt: int
    failed: bool = False
    span: Any = None
    """The CONSUMER span (tracing on), else None."""


_handling: contextvars.ContextVar[HandlingContext | None] = contextvars.ContextVar(
    "amqp_agents_handling", default=None
)


def current_handling() -> HandlingContext | None:
    """The delivery this task is handling, if any (and if instrumentation is on)."""
    return _handling.get()


class _Hub:
    """The listeners :func:`instrument` switched on, behind the hooks."""

    def __init__(self, tracing: Tracing | None, metrics: Metrics | None) -> None:
        self.tracing = tracing
        self.metrics = metrics


_hub: _Hub | None = None


def instrument(
    *, tracing: bool = False, metrics: bool = False, log_context: bool = False, **options: Any
) -> None:
    """Switch listeners on (for the whole process; calling again replaces them).

    Args:
        tracing: OpenTelemetry spans and W3C trace context on the wire (extra ``otel``).
        metrics: Prometheus metrics in prometheus-client's default registry (extra
            ``metrics``).
        log_context: remember what each handler handles, for :mod:`amqp_agents.logs`
            (on whenever ``tracing`` or ``metrics`` is).
        options: ``tracer_provider=`` (default: OpenTelemetry's global one).

    Raises:
        ConfigError: an extra that is asked for is not installed.
    """
    global _hub
    tracer = metric_set = None
    if tracing:
        try:
            from .tracing import Tracing
        except ImportError as exc:
            raise ConfigError(
                f"tracing needs the extra 'otel' (opentelemetry-api): {exc}"
            ) from None
        tracer = Tracing(options.get("tracer_provider"))
    if metrics:
        try:
            from .metrics import Metrics
        except ImportError as exc:
            raise ConfigError(
                f"metrics need the extra 'metrics' (prometheus-client): {exc}"
            ) from None
        metric_set = Metrics.shared()
    _hub = _Hub(tracer, metric_set) if (tracer or metric_set or log_context) else None


def metrics_installed() -> bool:
    """Whether the extra ``metrics`` (prometheus-client) is installed (nothing imported)."""
    return importlib.util.find_spec("prometheus_client") is not None


def tracer_configured() -> bool:
    """Whether an OpenTelemetry SDK is configured as this process's global tracer
    provider (imports nothing when the extra ``otel`` is absent)."""
    if importlib.util.find_spec("opentelemetry") is None:
        return False
    from opentelemetry import trace

    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def uninstrument() -> None:
    """Switch every listener off: the hooks do nothing again."""
    global _hub
    _hub = None


def is_instrumented() -> bool:
    """Whether any listener is on."""
    return _hub is not None


# -- the hooks ----------------------------------------------------------------------------


def publishing(
    exchange: str, routing_key: str, properties: Basic.Properties
) -> contextlib.AbstractContextManager[object]:
    """Around one confirmed publish (the confirm included); may add trace headers to
    ``properties.headers``, so call it before the properties are marshalled."""
    hub = _hub
    if hub is None:
        return _NOTHING
    return _Publishing(hub, exchange, routing_key, properties)


def handling(
    agent_id: str, incoming: Inbound, message: Message
) -> contextlib.AbstractContextManager[object]:
    """Around one handler run: its reply, retry or dead letter, and its ack."""
    hub = _hub
    if hub is None:
        return _NOTHING
    return _Handling(hub, agent_id, incoming, message)


def requesting(
    message: Message, reply: asyncio.Future[Message], timeout_s: float
) -> contextlib.AbstractContextManager[object]:
    """Around the publish of a request whose reply ``reply`` will carry: a CLIENT span
    that ends with the reply, or ``timeout_s`` after the send."""
    hub = _hub
    if hub is None or hub.tracing is None:
        return _NOTHING
    return hub.tracing.client(message, reply, timeout_s)


def failed(error: BaseException) -> None:
    """The handler of the delivery being handled raised ``error``."""
    if _hub is None or (now := _handling.get()) is None:
        return
    now.failed = True
    if now.span is not None and _hub.tracing is not None:
        _hub.tracing.record_error(now.span, error)


def retried(agent_id: str, incoming: Inbound) -> None:
    """A delivery was parked in a retry queue."""
    if _hub is not None and _hub.metrics is not None:
        _hub.metrics.retried(agent_id, type_label(incoming.type)).inc()


def dead_lettered(agent_id: str, incoming: Inbound) -> None:
    """A delivery was moved to the dead letters."""
    if _hub is not None and _hub.metrics is not None:
        _hub.metrics.dead_lettered(agent_id, type_label(incoming.type)).inc()


def connected(connection: AbstractRobustConnection) -> None:
    """Follow a client's connection: its state and its reconnects."""
    if _hub is not None and _hub.metrics is not None:
        _hub.metrics.follow(connection)


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), if tracing is on and there is one."""
    if _hub is None or _hub.tracing is None:
        return None
    return _hub.tracing.trace_id()


# -- what the hooks do when someone listens ------------------------------------------------


class _Publishing:
    __slots__ = ("_hub", "_properties", "_span", "_started", "_token")

    def __init__(
        self, hub: _Hub, exchange: str, routing_key: str, properties: Basic.Properties
    ) -> None:
        self._hub = hub
        self._properties = properties
        self._span: Any = None
        if hub.tracing is not None:
            headers = properties.headers
            if headers is None:
                headers = properties.headers = {}
            self._span = hub.tracing.producer(exchange, routing_key, properties, headers)
        self._started = 0.0

    def __enter__(self) -> object:
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        metrics = self._hub.metrics
        if metrics is not None and error is None:
            metrics.confirm_seconds.observe(time.perf_counter() - self._started)
            headers: Mapping[str, Any] = self._properties.headers or {}
            if not _is_copy(headers):
                sender = headers.get("x-sender")
                metrics.sent(
                    sender if isinstance(sender, str) else "",
                    type_label(self._properties.message_type),
                ).inc()
        if self._span is not None:
            assert self._hub.tracing is not None
            self._hub.tracing.end(self._span, error)


def _is_copy(headers: Mapping[str, Any]) -> bool:
    """Whether a publish is a retry's or a dead letter's copy (counted as such, not as
    a message sent); those are the only publishes with these headers."""
    return H_DEAD_REASON in headers or H_ATTEMPT in headers


class _Handling:
    __slots__ = ("_context", "_hub", "_started", "_token", "_trace_token")

    def __init__(self, hub: _Hub, agent_id: str, incoming: Inbound, message: Message) -> None:
        self._hub = hub
        self._context = HandlingContext(
            agent_id,
            message.id,
            message.conversation_id,
            type_label(message.type.value),
            attempt_of(incoming.headers),
        )
        self._trace_token: Any = None
        if hub.tracing is not None:
            self._context.span, self._trace_token = hub.tracing.consumer(
                agent_id, incoming, message, self._context.attempt
            )
        self._token: contextvars.Token[HandlingContext | None] | None = None
        self._started = 0.0

    def __enter__(self) -> object:
        self._token = _handling.set(self._context)
        if (metrics := self._hub.metrics) is not None:
            metrics.in_flight(self._context.agent).inc()
        self._started = time.perf_counter()
        return self._context

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        context = self._context
        if (metrics := self._hub.metrics) is not None:
            labels = (context.agent, context.message_type)
            metrics.in_flight(context.agent).dec()
            metrics.handler_seconds(*labels).observe(time.perf_counter() - self._started)
            if context.failed:
                metrics.failed(*labels).inc()
            elif error is None:
                metrics.handled(*labels).inc()
        if self._token is not None:
            _handling.reset(self._token)
        if context.span is not None:
            assert self._hub.tracing is not None
            self._hub.tracing.detach(self._trace_token)
            self._hub.tracing.end(context.span, error)
