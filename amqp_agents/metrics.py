"""Prometheus metrics of the library (extra ``metrics``), in prometheus-client's default
registry: served by ``amqp-agents run --metrics-port`` (:mod:`amqp_agents.probes`), or by
whatever serves that registry in your process.

Every label takes few values: ``agent`` is an agent this process runs or speaks for,
``type`` one of the contract's message types (``other`` for a foreign one). Message
ids and conversation ids are never labels. A handler run counts once, as handled
(it returned) or as failed (it raised; then it is retried or dead-lettered too).

=================================================  =================================
``amqp_agents_messages_sent_total``                agent (sender), type
``amqp_agents_messages_handled_total``             agent, type
``amqp_agents_messages_failed_total``              agent, type
``amqp_agents_messages_retried_total``             agent, type
``amqp_agents_messages_dead_lettered_total``       agent, type
``amqp_agents_handler_duration_seconds``           agent, type (histogram)
``amqp_agents_publish_confirm_seconds``            (histogram) publish to broker confirm
``amqp_agents_handlers_in_flight``                 agent
``amqp_agents_connections_open``                   connections up now
``amqp_agents_connections_recovering``             connections lost, reconnecting
``amqp_agents_reconnects_total``                   reconnections that succeeded
=================================================  =================================

Only :mod:`amqp_agents.instrumentation` imports this module, when metrics are asked for.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LABELS = ("agent", "type")

CONFIRM_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
"""A confirm takes a fraction of a millisecond on a local broker, seconds when it is blocked."""
HANDLER_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Handlers range from an echo (a millisecond) to an LLM call (minutes)."""


def labelled(metric: Any) -> Callable[..., Any]:
    """``metric.labels``, remembered per label values: prometheus-client checks and
    locks on every ``labels()`` call, and the hot path asks for the same few children
    again and again (bounded labels keep the cache small)."""
    return functools.lru_cache(maxsize=4096)(metric.labels)


class Metrics:
    """The library's metrics in one registry (one instance per registry: see :meth:`shared`).

    A labelled metric is an attribute that takes the label values and returns the
    child to count on: ``metrics.sent("writer", "result").inc()``.
    """

    _shared: ClassVar[Metrics | None] = None

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        def counter(name: str, text: str) -> Callable[..., Any]:
            return labelled(
                Counter(f"amqp_agents_messages_{name}", text, LABELS, registry=registry)
            )

        self.sent = counter("sent", "Messages published and confirmed, by sender and type.")
        self.handled = counter("handled", "Handler runs that returned.")
        self.failed = counter("failed", "Handler runs that raised.")
        self.retried = counter("retried", "Deliveries parked in a retry queue.")
        self.dead_lettered = counter("dead_lettered", "Deliveries moved to the dead letters.")
        self.handler_seconds = labelled(
            Histogram(
                "amqp_agents_handler_duration_seconds",
                "Time from a handler's start to its delivery's ack (reply, retry or dead letter"
                " included).",
                LABELS,
                buckets=HANDLER_BUCKETS_S,
                registry=registry,
            )
        )
        self.confirm_seconds = Histogram(
            "amqp_agents_publish_confirm_seconds",
            "Time from a publish to the broker's confirm.",
            buckets=CONFIRM_BUCKETS_S,
            registry=registry,
        )
        self.in_flight = labelled(
            Gauge(
                "amqp_agents_handlers_in_flight",
                "Handlers running now.",
                ["agent"],
                registry=registry,
            )
        )
        self._connections: weakref.WeakSet[AbstractRobustConnection] = weakref.WeakSet()
        Gauge(
            "amqp_agents_connections_open", "Broker connections up now.", registry=registry
        ).set_function(lambda: sum(c.connected.is_set() for c in self._connections))
        Gauge(
            "amqp_agents_connections_recovering",
            "Broker connections lost and reconnecting now.",
            registry=registry,
        ).set_function(
            lambda: sum(not c.connected.is_set() and not c.is_closed for c in self._connections)
        )
        self.reconnects = Counter(
            "amqp_agents_reconnects",
            "Reconnections to the broker that succeeded.",
            registry=registry,
        )

    @classmethod
    def shared(cls) -> Metrics:
        """The instance in the default registry (created on first use: a metric can be
        registered only once)."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def follow(self, connection: AbstractRobustConnection) -> None:
        """Count ``connection`` in the connection gauges and its reconnections."""
        if connection in self._connections:
            return
        self._connections.add(connection)
        connection.reconnect_callbacks.add(lambda *_: self.reconnects.inc())
