"""The in-process broker: exchanges, queues, bindings and what RabbitMQ does with them.

Pure Python and one event loop; :mod:`amqp_agents.memory.transport` is the slice of
the aiormq connection and channel interface that aio-pika (and so this library) calls
on it. What it keeps of RabbitMQ 3.13's semantics, each as the library relies on it:

* **Routing.** The default exchange (queue by name), ``direct``, ``fanout`` and
  ``topic`` exchanges; topic keys by AMQP's rules (``*`` one word, ``#`` zero or more,
  empty words count); sender-selected distribution (``CC``, ``BCC``; ``BCC`` removed).
* **Publishing.** ``mandatory``: no queue -> the message is returned; a queue at
  ``x-max-length`` with ``x-overflow: reject-publish`` -> nack (the other queues keep
  their copy, as on RabbitMQ; a quorum queue, as RabbitMQ's, takes one message over
  its limit before it refuses); the default overflow drops the head (dead-lettered,
  reason ``maxlen``); a ``user_id`` other than the connection's user closes the channel
  (406), an unknown exchange too (404).
* **Queues.** ``x-max-priority`` (classic: highest priority first, FIFO within one);
  per-message ``expiration`` and ``x-message-ttl``; ``x-dead-letter-exchange`` /
  ``-routing-key`` with ``x-death`` and ``x-first-death-*`` headers (reasons
  ``rejected``, ``expired``, ``maxlen``, ``delivery_limit``); quorum ``x-delivery-limit``
  with the ``x-delivery-count`` header; exclusive and auto-delete queues; passive
  declares (404), redeclares with other arguments (406 ``inequivalent arg``).
* **Consuming.** Per-consumer prefetch, round robin between consumers, ack / nack /
  reject (requeued messages keep their place and are ``redelivered``), unacknowledged
  deliveries requeued when their channel or connection closes, ``basic.cancel`` sent
  to consumers of a deleted queue.
* **Streams** (``x-queue-type: stream``): an append-only log read from
  ``x-stream-offset`` (``first``, ``last``, ``next``, an offset or a timestamp), each
  delivery carrying its offset in that header; acknowledging does not remove.

What is not the same (by design: one process, no network, no disk):

* Nothing survives the process; ``durable`` is recorded, not honoured. There are no
  nodes, so no leader elections, unavailable queues, alarms or blocked publishers.
* No permissions: every connection may do everything (vhosts, users and topic
  permissions are RabbitMQ's); the ``user_id`` check still holds.
* Messages expire wherever they are in a queue, not only at its head; a stream keeps
  every entry (``x-max-age`` and ``x-max-length-bytes`` are not applied);
  ``max_message_size`` and frame limits do not exist.
* Properties are encoded and decoded once per publish with pamqp, exactly as on the
  wire, so deliveries see the types RabbitMQ would give them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pamqp.commands import Basic

from .queues import Exchange, Queue, Stored, with_headers

if TYPE_CHECKING:
    from .transport import MemoryLink

DEFAULT_EXCHANGES = {
    "amq.direct": "direct",
    "amq.topic": "topic",
    "amq.fanout": "fanout",
    "amq.headers": "headers",
}
EQUIVALENT_ARGUMENTS = (
    "x-queue-type",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-overflow",
    "x-delivery-limit",
    "x-expires",
    "x-max-age",
    "x-dead-letter-strategy",
)
"""Queue arguments a redeclare must repeat exactly (RabbitMQ: 406 inequivalent arg)."""


class BrokerError(Exception):
    """A refusal that closes the channel, with AMQP's reply code and text."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text


def not_found(kind: str, name: str) -> BrokerError:
    return BrokerError(404, f"NOT_FOUND - no {kind} '{name}' in vhost '/'")


def precondition(text: str) -> BrokerError:
    return BrokerError(406, f"PRECONDITION_FAILED - {text}")


# -- the broker -----------------------------------------------------------------------


class MemoryBroker:
    """One in-process broker (one vhost). ``memory://NAME`` names one per process."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.exchanges: dict[str, Exchange] = {"": Exchange("", "direct")}
        for exchange, kind in DEFAULT_EXCHANGES.items():
            self.exchanges[exchange] = Exchange(exchange, kind)
        self.queues: dict[str, Queue] = {}
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
        return loop

    def now(self) -> float:
        """The event loop's clock (a virtual clock in :mod:`amqp_agents.testing`)."""
        return self.loop.time()

    def expire_at(self, queue: Queue, when: float) -> None:
        self.loop.call_at(when, queue.expire)

    # -- declaring ------------------------------------------------------------------

    def declare_exchange(self, name: str, kind: str, *, durable: bool, passive: bool) -> None:
        existing = self.exchanges.get(name)
        if passive:
            if existing is None:
                raise not_found("exchange", name)
            return
        if name.startswith("amq.") and existing is None:
            raise BrokerError(
                403, f"ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'"
            )
        if existing is None:
            self.exchanges[name] = Exchange(name, kind, durable)
        elif existing.type != kind:
            raise precondition(
                f"inequivalent arg 'type' for exchange '{name}' in vhost '/':"
                f" received '{kind}' but current is '{existing.type}'"
            )

    def declare_queue(
        self,
        link: MemoryLink,
        name: str,
        *,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        passive: bool,
        arguments: Mapping[str, Any] | None,
    ) -> Queue:
        existing = self.queues.get(name) if name else None
        if existing is not None and existing.owner is not None and existing.owner is not link:
            raise BrokerError(
                405,
                f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}'"
                " in vhost '/'. It could be originally declared on another connection or"
                " the exclusive property value does not match that of the original"
                " declaration.",
            )
        if passive:
            if existing is None:
                raise not_found("queue", name)
            return existing
        arguments = dict(arguments or {})
        if existing is not None:
            self._check_equivalent(existing, arguments, durable)
            return existing
        if name.startswith("amq."):
            raise BrokerError(
                403, f"ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'"
            )
        if not name:
            name = f"amq.gen-{uuid.uuid4().hex[:22]}"
        kind = str(arguments.get("x-queue-type", "classic"))
        if kind in ("quorum", "stream") and (exclusive or auto_delete or not durable):
            what = "exclusive" if exclusive else "auto-delete" if auto_delete else "non-durable"
            raise precondition(f"invalid property '{what}' for queue '{name}' in vhost '/'")
        queue = Queue(
            self,
            name,
            durable=durable,
            exclusive_owner=link if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        self.queues[name] = queue
        return queue

    def _check_equivalent(self, queue: Queue, arguments: Mapping[str, Any], durable: bool) -> None:
        if queue.durable != durable:
            raise precondition(
                f"inequivalent arg 'durable' for queue '{queue.name}' in vhost '/':"
                f" received '{str(durable).lower()}' but current is"
                f" '{str(queue.durable).lower()}'"
            )
        for argument in EQUIVALENT_ARGUMENTS:
            received, current = arguments.get(argument), queue.arguments.get(argument)
            if argument == "x-queue-type" and received is None:
                continue  # RabbitMQ: no type given matches the queue's type
            if received != current:
                raise precondition(
                    f"inequivalent arg '{argument}' for queue '{queue.name}' in vhost '/':"
                    f" received {_shown(received)} but current is {_shown(current)}"
                )

    def bind(self, queue: str, exchange: str, key: str) -> None:
        if exchange == "":
            raise BrokerError(
                403, "ACCESS_REFUSED - operation not permitted on the default exchange"
            )
        if queue not in self.queues:
            raise not_found("queue", queue)
        if exchange not in self.exchanges:
            raise not_found("exchange", exchange)
        self.exchanges[exchange].bind(queue, key)

    def unbind(self, queue: str, exchange: str, key: str) -> None:
        if exchange in self.exchanges:
            self.exchanges[exchange].unbind(queue, key)

    def delete_queue(self, name: str) -> int:
        queue = self.queues.pop(name, None)
        if queue is None:
            return 0
        queue.deleted = True
        for exchange in self.exchanges.values():
            exchange.unbind(name)
        for consumer in list(queue.consumers):
            consumer.channel.cancelled_by_broker(consumer)
        queue.consumers.clear()
        return queue.message_count

    def delete_exchange(self, name: str) -> None:
        if name in self.exchanges and name != "" and name not in DEFAULT_EXCHANGES:
            del self.exchanges[name]

    def purge(self, name: str) -> int:
        queue = self.queues.get(name)
        if queue is None:
            raise not_found("queue", name)
        count = len(queue.ready)
        queue.ready.clear()
        return count

    def link_closed(self, link: MemoryLink) -> None:
        """A connection closed: its exclusive queues go."""
        for queue in [q for q in self.queues.values() if q.owner is link]:
            self.delete_queue(queue.name)

    # -- publishing -----------------------------------------------------------------

    def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        user: str | None,
    ) -> tuple[bool, bool]:
        """Route a message into its queues; returns (routed anywhere, refused by any).

        Raises:
            BrokerError: no such exchange (404), a ``user_id`` not the user's (406).
        """
        target = self.exchanges.get(exchange)
        if target is None:
            raise not_found("exchange", exchange)
        if properties.user_id and properties.user_id != user:
            raise precondition(
                f"user_id property set to '{properties.user_id}' but authenticated user"
                f" was '{user}'"
            )
        keys = [routing_key]
        headers = properties.headers
        if headers and ("CC" in headers or "BCC" in headers):
            keys += _keys(headers.get("CC")) + _keys(headers.get("BCC"))
            if "BCC" in headers:
                headers = {k: v for k, v in headers.items() if k != "BCC"}
                properties = with_headers(properties, headers)
        names = self._route(target, keys)
        if not names:
            return False, False
        refused = False
        now = self.now()
        expiration = properties.expiration
        expires_at = None
        if expiration:
            try:
                expires_at = now + int(expiration) / 1000
            except ValueError:
                raise precondition(f"invalid expiration '{expiration}'") from None
        stamp = time.time()
        for name in names:
            queue = self.queues[name]
            stored = Stored(
                body,
                properties,
                exchange,
                routing_key,
                next(self._seq),
                properties.priority or 0,
                expires_at,
                timestamp_s=stamp,
            )
            if not queue.enqueue(stored):
                refused = True
        return True, refused

    def _route(self, exchange: Exchange, keys: Iterable[str]) -> list[str]:
        names: dict[str, None] = {}
        for key in keys:
            if exchange.name == "":
                if key in self.queues:
                    names[key] = None
                continue
            for name in exchange.route(key):
                names[name] = None
        return list(names)

    def dead_letter(self, queue: Queue, stored: Stored, reason: str) -> None:
        """Move a message out of ``queue`` to its dead-letter exchange, if it has one."""
        if queue.dead_letter_exchange is None:
            return
        target = self.exchanges.get(queue.dead_letter_exchange)
        if target is None:
            return
        properties = stored.properties
        headers: dict[str, Any] = dict(properties.headers or {})
        keys = [stored.routing_key, *_keys(headers.get("CC"))]
        earlier = headers.get("x-death")
        deaths: list[dict[str, Any]] = [
            dict(d) for d in (earlier if isinstance(earlier, list) else []) if isinstance(d, dict)
        ]
        for death in deaths:
            if death.get("queue") == queue.name and death.get("reason") == reason:
                death["count"] = int(death.get("count", 0)) + 1
                deaths.remove(death)
                deaths.insert(0, death)
                break
        else:
            death = {
                "count": 1,
                "reason": reason,
                "queue": queue.name,
                "time": datetime.now(UTC).replace(microsecond=0),
                "exchange": stored.exchange,
                "routing-keys": keys,
            }
            if properties.expiration:
                death["original-expiration"] = properties.expiration
            deaths.insert(0, death)
        headers["x-death"] = deaths
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", queue.name)
        headers.setdefault("x-first-death-exchange", stored.exchange)
        headers.pop("x-delivery-count", None)
        copy = with_headers(properties, headers)
        copy.expiration = None
        key = queue.dead_letter_key
        routing = [key] if key is not None else keys
        stamp = time.time()
        for name in self._route(target, routing):
            if name == queue.name and reason != "rejected" and target.name == "":
                continue
            self.queues[name].enqueue(
                Stored(
                    stored.body,
                    copy,
                    target.name,
                    routing[0],
                    next(self._seq),
                    stored.priority,
                    timestamp_s=stamp,
                )
            )


def _keys(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    return []


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    kind = "longstr" if isinstance(value, str) else "signedint" if isinstance(value, int) else ""
    return f"the value '{value}' of type '{kind}'"


_registry: dict[str, MemoryBroker] = {}


def named(name: str) -> MemoryBroker:
    """The process-wide broker called ``name`` (``memory://name``; "" for ``memory://``)."""
    broker = _registry.get(name)
    if broker is None:
        broker = _registry[name] = MemoryBroker(name)
    return broker


def forget(name: str) -> None:
    """Drop the broker called ``name`` and everything in it (tests' teardown)."""
    _registry.pop(name, None)
