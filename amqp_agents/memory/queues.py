"""The memory broker's exchanges and queues: routing by exchange type, and a queue's
messages (priority, then arrival), consumers (prefetch, round robin), expiry,
returns and the stream log. :mod:`.broker` holds them and does what crosses queues
(publishing, dead-lettering).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pamqp.commands import Basic

from .topic import topic_matches

if TYPE_CHECKING:
    from .broker import MemoryBroker
    from .transport import MemoryChannel, MemoryLink

STREAM_CHUNK = 16
"""Stream entries delivered to a consumer per turn of the event loop (RabbitMQ sends a
stream in chunks of entries; a reader sees them arrive over time, not all at once)."""


ROUTE_CACHE_KEYS = 4096
"""Routing keys whose queues an exchange remembers (then it forgets them all)."""


@dataclass(slots=True)
class Exchange:
    name: str
    type: str
    durable: bool = True
    bindings: dict[tuple[str, str], None] = field(default_factory=dict)
    """(queue, key) in binding order. Change it only through :meth:`bind` and
    :meth:`unbind`, which forget :attr:`routes`."""
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """routing key -> the queues it reaches: matched once per key, not per message."""

    def bind(self, queue: str, key: str) -> None:
        self.bindings[(queue, key)] = None
        self.routes.clear()

    def unbind(self, queue: str, key: str | None = None) -> None:
        """Remove one binding of ``queue``, or with ``key=None`` all of them."""
        if key is not None:
            self.bindings.pop((queue, key), None)
        else:
            for binding in [b for b in self.bindings if b[0] == queue]:
                del self.bindings[binding]
        self.routes.clear()

    def route(self, key: str) -> tuple[str, ...]:
        """The queues bound to ``key``, in binding order."""
        names = self.routes.get(key)
        if names is None:
            names = tuple(self._match(key))
            if len(self.routes) >= ROUTE_CACHE_KEYS:
                self.routes.clear()
            self.routes[key] = names
        return names

    def _match(self, key: str) -> list[str]:
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
            stored.properties = with_headers(stored.properties, headers)
            if self.delivery_limit is not None and stored.returns > self.delivery_limit:
                self.broker.dead_letter(self, stored, "delivery_limit")
                return
        self.push(stored)

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
        if self.auto_delete and self.had_consumer and not self.consumers:
            self.broker.delete_queue(self.name)


def with_headers(properties: Basic.Properties, headers: dict[str, Any]) -> Basic.Properties:
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
