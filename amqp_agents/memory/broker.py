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
import functools
import heapq
import itertools
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pamqp.commands import Basic

if TYPE_CHECKING:
    from .transport import MemoryChannel, MemoryLink

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
STREAM_CHUNK = 16
"""Stream entries delivered to a consumer per turn of the event loop (RabbitMQ sends a
stream in chunks of entries; a reader sees them arrive over time, not all at once)."""


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


# -- topic matching -------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def topic_matches(pattern: str, key: str) -> bool:
    """Whether routing ``key`` matches binding ``pattern`` by AMQP's topic rules.

    Words are separated by dots (an empty string between two dots, or after a last
    dot, is a word; the empty key has no words, as RabbitMQ splits it); ``*`` matches
    exactly one word, ``#`` zero or more.

    >>> topic_matches("a.#", "a"), topic_matches("*.b", ".b"), topic_matches("*", "")
    (True, True, False)
    """
    return _match(_words(pattern), _words(key))


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split(".")) if text else ()


@functools.lru_cache(maxsize=65536)
def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


# -- exchanges, messages, queues -------------------------------------------------------


@dataclass(slots=True)
class Exchange:
    name: str
    type: str
    durable: bool = True
    bindings: dict[tuple[str, str], None] = field(default_factory=dict)
    """(queue, key) in binding order."""

    def route(self, key: str, queues: Mapping[str, Queue]) -> list[str]:
        if self.type == "fanout":
            return [q for q, _ in self.bindings]
        if self.type == "topic":
            return [q for q, pattern in self.bindings if topic_matches(pattern, key)]
        if self.type == "direct":
            return [q for q, bound in self.bindings if bound == key]
        return []


@dataclass(slots=True, eq=False)
class Stored:
    """One message in one queue."""

    body: bytes
    properties: Basic.Properties
    exchange: str
    routing_key: str
    seq: int
    priority: int = 0
    expires_at: float | None = None
    redelivered: bool = False
    returns: int = 0
    timestamp_s: float = 0.0

    def __lt__(self, other: Stored) -> bool:
        return self.seq < other.seq


@dataclass(slots=True, eq=False)
class Consumer:
    channel: MemoryChannel
    queue: Queue
    tag: str
    callback: Callable[[Any], Any]
    no_ack: bool
    prefetch: int
    in_flight: int = 0
    position: int = 0
    """Streams: the next offset to deliver."""

    @property
    def has_room(self) -> bool:
        return self.no_ack or self.prefetch == 0 or self.in_flight < self.prefetch


class Queue:
    """A queue (classic or quorum: ready messages in priority then arrival order) or a
    stream (an append-only log)."""

    def __init__(
        self,
        broker: MemoryBroker,
        name: str,
        *,
        durable: bool,
        exclusive_owner: MemoryLink | None,
        auto_delete: bool,
        arguments: Mapping[str, Any],
    ) -> None:
        self.broker = broker
        self.name = name
        self.durable = durable
        self.owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = dict(arguments)
        self.kind = str(self.arguments.get("x-queue-type", "classic"))
        self.max_priority = int(self.arguments.get("x-max-priority", 0) or 0)
        if self.kind != "classic":
            self.max_priority = 0
        self.max_length = self.arguments.get("x-max-length")
        self.overflow = str(self.arguments.get("x-overflow", "drop-head"))
        self.dead_letter_exchange: str | None = self.arguments.get("x-dead-letter-exchange")
        self.dead_letter_key: str | None = self.arguments.get("x-dead-letter-routing-key")
        ttl = self.arguments.get("x-message-ttl")
        self.ttl_s = None if ttl is None else int(ttl) / 1000
        limit = self.arguments.get("x-delivery-limit")
        self.delivery_limit = None if limit is None or self.kind != "quorum" else int(limit)
        self.ready: list[tuple[int, int, Stored]] = []
        self.log: list[Stored] = []
        self.consumers: list[Consumer] = []
        self._next_consumer = 0
        self._scheduled = False
        self.deleted = False
        self.had_consumer = False

    @property
    def is_stream(self) -> bool:
        return self.kind == "stream"

    @property
    def message_count(self) -> int:
        return len(self.log) if self.is_stream else len(self.ready)

    def full(self) -> bool:
        if self.max_length is None:
            return False
        if self.kind == "quorum":  # RabbitMQ's quorum queues take one over the limit
            return len(self.ready) > int(self.max_length)
        return len(self.ready) >= int(self.max_length)

    def enqueue(self, stored: Stored) -> bool:
        """Take a message; False: refused (reject-publish and full)."""
        if self.is_stream:
            self.log.append(stored)
            self.schedule()
            return True
        if self.full():
            if self.overflow in ("reject-publish", "reject-publish-dlx"):
                if self.overflow == "reject-publish-dlx":
                    self.broker.dead_letter(self, stored, "maxlen")
                return False
            while self.full() and self.ready:
                _, _, head = heapq.heappop(self.ready)
                self.broker.dead_letter(self, head, "maxlen")
            if int(self.max_length or 0) == 0:
                self.broker.dead_letter(self, stored, "maxlen")
                return True
        ttl = self.ttl_s
        if ttl is not None:
            deadline = self.broker.now() + ttl
            if stored.expires_at is None or deadline < stored.expires_at:
                stored.expires_at = deadline
        self.push(stored)
        if stored.expires_at is not None:
            self.broker.expire_at(self, stored.expires_at)
        return True

    def push(self, stored: Stored) -> None:
        priority = min(stored.priority, self.max_priority)
        heapq.heappush(self.ready, (-priority, stored.seq, stored))
        self.schedule()

    def schedule(self) -> None:
        if not self._scheduled and self.consumers:
            self._scheduled = True
            self.broker.loop.call_soon(self.dispatch)

    def expire(self) -> None:
        """Dead-letter (reason ``expired``) every ready message whose time is up."""
        now = self.broker.now()
        if not any(s.expires_at is not None and s.expires_at <= now for _, _, s in self.ready):
            return
        keep = []
        for entry in self.ready:
            stored = entry[2]
            if stored.expires_at is not None and stored.expires_at <= now:
                self.broker.dead_letter(self, stored, "expired")
            else:
                keep.append(entry)
        heapq.heapify(keep)
        self.ready = keep

    def take(self) -> Stored | None:
        """The next ready message that has not expired (expired ones are dead-lettered)."""
        now = self.broker.now()
        while self.ready:
            _, _, stored = heapq.heappop(self.ready)
            if stored.expires_at is not None and stored.expires_at <= now:
                self.broker.dead_letter(self, stored, "expired")
                continue
            return stored
        return None

    def dispatch(self) -> None:
        self._scheduled = False
        if self.deleted:
            return
        if self.is_stream:
            more = False
            for consumer in list(self.consumers):
                chunk = STREAM_CHUNK
                while consumer.position < len(self.log) and consumer.has_room and chunk:
                    offset = consumer.position
                    consumer.position += 1
                    chunk -= 1
                    consumer.channel.deliver(consumer, self.log[offset], offset=offset)
                more = more or (consumer.position < len(self.log) and consumer.has_room)
            if more:  # the next chunk after the loop turned, as a broker sends chunks
                self.schedule()
            return
        while self.ready and self.consumers:
            taker = self._next_with_room()
            if taker is None:
                return
            stored = self.take()
            if stored is None:
                return
            taker.channel.deliver(taker, stored)

    def _next_with_room(self) -> Consumer | None:
        count = len(self.consumers)
        for step in range(count):
            index = (self._next_consumer + step) % count
            consumer = self.consumers[index]
            if consumer.has_room and not consumer.channel.is_closed:
                self._next_consumer = index + 1
                return consumer
        return None

    def requeue(self, stored: Stored) -> None:
        """A delivery came back unacknowledged (nack/reject with requeue, a closed channel)."""
        if self.deleted or self.is_stream:
            return
        stored.redelivered = True
        if self.kind == "quorum":
            stored.returns += 1
            headers = dict(stored.properties.headers or {})
            headers["x-delivery-count"] = stored.returns
            stored.properties = _with_headers(stored.properties, headers)
            if self.delivery_limit is not None and stored.returns > self.delivery_limit:
                self.broker.dead_letter(self, stored, "delivery_limit")
                return
        self.push(stored)

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        if self.auto_delete and self.had_consumer and not self.consumers:
            self.broker.delete_queue(self.name)


def _with_headers(properties: Basic.Properties, headers: dict[str, Any]) -> Basic.Properties:
    copy = Basic.Properties(**{name: getattr(properties, name) for name in _PROPERTY_NAMES})
    copy.headers = headers
    return copy


_PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "message_type",
    "user_id",
    "app_id",
    "cluster_id",
)


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
        self.exchanges[exchange].bindings[(queue, key)] = None

    def unbind(self, queue: str, exchange: str, key: str) -> None:
        if exchange in self.exchanges:
            self.exchanges[exchange].bindings.pop((queue, key), None)

    def delete_queue(self, name: str) -> int:
        queue = self.queues.pop(name, None)
        if queue is None:
            return 0
        queue.deleted = True
        for exchange in self.exchanges.values():
            for binding in [b for b in exchange.bindings if b[0] == name]:
                del exchange.bindings[binding]
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
                properties = _with_headers(properties, headers)
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
        stamp = datetime.now(UTC).timestamp()
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
            for name in exchange.route(key, self.queues):
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
        copy = _with_headers(properties, headers)
        copy.expiration = None
        key = queue.dead_letter_key
        routing = [key] if key is not None else keys
        stamp = datetime.now(UTC).timestamp()
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
