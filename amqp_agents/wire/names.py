"""The broker names of a namespace, their declaration arguments, and routing keys.

Every exchange, queue and binding key an agent, a CLI command or a foreign client
uses is built here, so a name is spelled in one place (docs/wire-format.md, "Names").
Also the address checks that read those names back: whom a delivery is for, and
which queues an answer may go to.

Names for namespace ``ns``::

    exchange_name("agents")            -> "agents"            (topic, durable)
    inbox_name("agents", "writer")     -> "agents.inbox.writer"  (classic; quorum: NORMAL lane)
    lane_name("agents", "writer", HIGH_LANE) -> "agents.inbox.writer.high"  (quorum only)
    inbox_binding_key("writer")        -> "*.*.*.writer"
    lane_binding_keys("*.*.*.w", HIGH_LANE) -> ["*.4.*.w", "*.3.*.w"]
    route_binding_key(msg_type="task") -> "task.*.*.-"       (a route's binding)
    routing_key(msg)                   -> "task.2.coordinator.writer"
    dead_letter_exchange_name("agents")-> "agents.dlx"        (fanout)
    dead_queue_name("agents")          -> "agents.dead"
    history_name("agents")             -> "agents.history"    (stream)
    reply_queue_name("agents", "w", t) -> "agents.reply.w.{t}" (exclusive, per connection)
    reply_queue_owner("agents", "agents.reply.w.{t}") -> "w"
    reply_exchange_name("agents")      -> "agents.replies"    (topic; reply queues bound by name)
    retry_exchange_name("agents", "w") -> "agents.retry.w"    (direct; one per agent)
    retry_queue_name("agents", "w", 0.2) -> "agents.retry.w.200ms"
    topology_record_name("agents")     -> "agents.topology"   (what `topology apply` bound)
    cancel_exchange_name("agents")     -> "agents.cancels"    (fanout; into the stream below)
    cancel_stream_name("agents")       -> "agents.cancels"    (stream of cancel records)
    card_exchange_name("agents")       -> "agents.cards"      (fanout; into the stream below)
    card_stream_name("agents")         -> "agents.cards"      (stream of agent cards)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from amqp_agents.errors import ConfigError, InvalidMessageError
from amqp_agents.message import Message

NO_AGENT = "-"
"""Routing-key word for an unknown sender or a recipient-less (routed) message."""

INBOX_MAX_PRIORITY = 4

QueueType = Literal["quorum", "classic"]
"""How a namespace keeps its durable queues: replicated (quorum) or single-node (classic)."""
QUEUE_TYPES: tuple[QueueType, ...] = get_args(QueueType)
DEFAULT_QUEUE_TYPE: QueueType = "quorum"
HistoryMode = Literal["stream", "off"]
"""Whether a namespace keeps its messages in the ``{ns}.history`` stream (docs/history.md)."""
HISTORY_MODES: tuple[HistoryMode, ...] = get_args(HistoryMode)
DEFAULT_HISTORY: HistoryMode = "stream"
DEFAULT_DELIVERY_LIMIT = 5
"""Deliveries of one message from a quorum lane, none acknowledged, before the broker
dead-letters it (a sixth delivery never happens)."""


@dataclass(frozen=True, slots=True)
class Lane:
    """One quorum queue of an inbox, holding the messages of some priorities.

    Quorum queues have no priorities (RabbitMQ 3.10), so a quorum inbox is one queue
    per group of priority words, bound with those words; the agent consumes every
    lane and starts the highest priority it holds first (docs/wire-format.md, "Lanes").

    Attributes:
        suffix: appended to the inbox name (``""``: the lane *is* ``{ns}.inbox.X``).
        priorities: the priority words it takes, highest first.
    """

    suffix: str
    priorities: tuple[int, ...]


HIGH_LANE = Lane(".high", (4, 3))
NORMAL_LANE = Lane("", (2, 1))
LANES: tuple[Lane, ...] = (HIGH_LANE, NORMAL_LANE)
"""A quorum inbox's lanes, highest first. Two, not four: each quorum queue costs the
broker about 120 KB (docs/wire-format.md, "Lanes", has the measurement)."""


def validate_queue_type(value: str) -> QueueType:
    """``value`` if it is a queue type, else ConfigError naming the choices."""
    for queue_type in QUEUE_TYPES:
        if value == queue_type:
            return queue_type
    raise ConfigError(f"queue type {value!r} is not one of {', '.join(QUEUE_TYPES)}")


def validate_history_mode(value: str) -> HistoryMode:
    """``value`` if it is a history mode, else ConfigError naming the choices."""
    for mode in HISTORY_MODES:
        if value == mode:
            return mode
    raise ConfigError(f"history {value!r} is not one of {', '.join(HISTORY_MODES)}")


def effective_priority(priority: int | None) -> int:
    """An AMQP priority as the contract reads it: none or 0 is 2, above 4 is 4."""
    return min(max(priority or 2, 1), INBOX_MAX_PRIORITY)


def lane_of(priority: int | None) -> Lane:
    """The lane a message of AMQP ``priority`` belongs in (none, 0: NORMAL's)."""
    word = effective_priority(priority)
    return next(lane for lane in LANES if word in lane.priorities)


_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


def validate_namespace(ns: str) -> str:
    """Return ``ns`` if usable as a name prefix, else raise InvalidMessageError.

    >>> validate_namespace("prod.agents")
    'prod.agents'
    """
    if not _NAMESPACE.fullmatch(ns) or ns.startswith("amq."):
        raise InvalidMessageError(f"invalid namespace {ns!r}")
    return ns


def exchange_name(ns: str) -> str:
    """The topic exchange all agent traffic of ``ns`` is published to."""
    return ns


def inbox_name(ns: str, agent_id: str) -> str:
    """``inbox_name("agents", "writer") -> "agents.inbox.writer"``."""
    return f"{ns}.inbox.{agent_id}"


def lane_name(ns: str, agent_id: str, lane: Lane) -> str:
    """``lane_name("agents", "w", HIGH_LANE) -> "agents.inbox.w.high"``; NORMAL's is the inbox's."""
    return inbox_name(ns, agent_id) + lane.suffix


def inbox_queue_names(ns: str, agent_id: str, queue_type: QueueType) -> tuple[str, ...]:
    """The queues an agent consumes, highest priority first: its inbox, or its lanes."""
    if queue_type == "classic":
        return (inbox_name(ns, agent_id),)
    return tuple(lane_name(ns, agent_id, lane) for lane in LANES)


def lane_binding_keys(key: str, lane: Lane) -> list[str]:
    """The keys binding ``lane`` for the binding key ``key`` of a whole inbox.

    A ``*`` priority word becomes each of the lane's words; a lane not taking the
    key's priority word gets no binding. ``lane_binding_keys("task.3.*.-", NORMAL_LANE)
    -> []``.
    """
    words = key.split(".")
    if len(words) != 4:
        raise ValueError(f"binding key {key!r} is not four words")
    if words[1] == "*":
        return [".".join((words[0], str(p), *words[2:])) for p in lane.priorities]
    return [key] if words[1].isdigit() and int(words[1]) in lane.priorities else []


def inbox_binding_key(agent_id: str) -> str:
    """``inbox_binding_key("writer") -> "*.*.*.writer"``: every message addressed to it."""
    return f"*.*.*.{agent_id}"


def dead_letter_exchange_name(ns: str) -> str:
    """Fanout exchange the inboxes dead-letter into; bound to :func:`dead_queue_name`."""
    return f"{ns}.dlx"


def dead_queue_name(ns: str) -> str:
    """Where messages that could not be handled end, with headers saying why."""
    return f"{ns}.dead"


def history_name(ns: str) -> str:
    """The stream queue keeping a bounded, durable copy of the namespace's traffic."""
    return f"{ns}.history"


def reply_queue_name(ns: str, owner: str | None, token: str) -> str:
    """A private reply queue: ``{ns}.reply.{owner}.{token}``, or ``{ns}.reply.{token}``.

    The owner (an agent id) lets a broker permission name exactly the reply queues of
    one agent: ``reply_queue_name("agents", "writer", "ab12") -> "agents.reply.writer.ab12"``.
    """
    return f"{ns}.reply.{owner}.{token}" if owner else f"{ns}.reply.{token}"


def reply_queue_owner(ns: str, queue: str) -> str | None:
    """The owner word of a reply queue name ``{ns}.reply.{owner}.{token}``, else None.

    An agent answers into a ``reply_to`` with an owner word only for a request whose
    sender's user may speak for that owner: otherwise anyone who learnt the name (it is
    in every request of its owner) could have answers poured into it.

    >>> reply_queue_owner("agents", "agents.reply.bob.0f3a")
    'bob'
    >>> reply_queue_owner("agents", "agents.reply.0f3a") is None
    True
    """
    if not is_reply_queue(ns, queue):
        return None
    owner, dot, _ = queue.removeprefix(f"{ns}.reply.").partition(".")
    return owner if dot else None


def is_reply_queue(ns: str, queue: str) -> bool:
    """Whether ``queue`` is named as a reply queue of ``ns`` (``{ns}.reply.*``).

    Answers to such a queue go through :func:`reply_exchange_name`, where the queue is
    bound with its own name; any other ``reply_to`` needs the default exchange.

    >>> is_reply_queue("agents", "agents.reply.bob.0f3a"), is_reply_queue("agents", "amq.gen-x")
    (True, False)
    """
    return queue.startswith(f"{ns}.reply.")


def reply_exchange_name(ns: str) -> str:
    """The topic exchange answers go through: ``"agents" -> "agents.replies"``.

    Each reply queue is bound to it with its own name as binding key, and the history
    stream with :func:`history_reply_binding_key`, so every answer is kept there too.
    Unlike the default exchange it reaches no inbox, and a broker topic permission can
    say which keys a user may bind (docs/deploy.md).
    """
    return f"{ns}.replies"


def history_reply_binding_key(ns: str) -> str:
    """The history stream's binding on :func:`reply_exchange_name`: every reply queue name."""
    return f"{ns}.reply.#"


def topology_record_name(ns: str) -> str:
    """Holds one message: the bindings the last ``amqp-agents topology apply`` made.

    AMQP cannot list bindings, so ``topology plan`` compares with this record.
    """
    return f"{ns}.topology"


def cancel_exchange_name(ns: str) -> str:
    """The fanout exchange cancel records are published to: ``"agents.cancels"``.

    Its only binding leads into :func:`cancel_stream_name` (an exchange and a queue may
    share a name: they are apart on the broker), so a broker permission can let a user
    cancel (write here) without letting it write into any queue by name.
    """
    return f"{ns}.cancels"


def cancel_stream_name(ns: str) -> str:
    """The stream keeping every cancel record until its retention drops it.

    Every agent reads it from its start when it starts, and then follows it: a cancel
    outlives the agent's process (docs/wire-format.md, "Cancelling a task").
    """
    return f"{ns}.cancels"


def card_exchange_name(ns: str) -> str:
    """The fanout exchange agent cards are published to: ``"agents.cards"``."""
    return f"{ns}.cards"


def card_stream_name(ns: str) -> str:
    """The stream of agent cards: the newest record of an agent id is its card
    (docs/wire-format.md, "Agent cards")."""
    return f"{ns}.cards"


def control_stream_arguments(*, max_bytes: int, max_age: str | None = None) -> dict[str, Any]:
    """A small stream of control records (cancels, cards), bounded by size (and age).

    Segments of a tenth of the size, so retention drops little at a time.
    """
    args: dict[str, Any] = {
        "x-queue-type": "stream",
        "x-max-length-bytes": max_bytes,
        "x-stream-max-segment-size-bytes": max(max_bytes // 10, 1_000_000),
    }
    if max_age is not None:
        args["x-max-age"] = max_age
    return args


CANCEL_STREAM_MAX_BYTES = 50_000_000
"""Cancel records kept at most (bytes); each is a few hundred bytes."""
CARD_STREAM_MAX_BYTES = 20_000_000
"""Card records kept at most (bytes); an agent publishes one per start and stop."""


def retry_queue_name(ns: str, agent_id: str, delay_s: float, lane: Lane = NORMAL_LANE) -> str:
    """``retry_queue_name("agents", "writer", 0.2) -> "agents.retry.writer.200ms"``.

    Bound to :func:`retry_exchange_name` with its own name as binding key. A quorum
    inbox's HIGH lane has its own: ``"agents.retry.writer.high.200ms"``.
    """
    return f"{ns}.retry.{agent_id}{lane.suffix}.{round(delay_s * 1000)}ms"


def retry_exchange_name(ns: str, agent_id: str) -> str:
    """The agent's own direct exchange into its retry queues: ``"agents.retry.writer"``.

    One per agent, so that a broker permission on the exchange (not a topic permission,
    which RabbitMQ before 4.0 does not check for ``CC``/``BCC`` keys) keeps every other
    user out of the agent's retry queues, which lead into its inbox.
    """
    return f"{ns}.retry.{agent_id}"


def retry_queue_arguments(
    ns: str,
    agent_id: str,
    delay_s: float,
    *,
    queue_type: QueueType = DEFAULT_QUEUE_TYPE,
    lane: Lane = NORMAL_LANE,
) -> dict[str, Any]:
    """A retry queue: messages wait ``delay_s`` there, then go back into the inbox (lane)."""
    return {
        **_durable_arguments(queue_type),
        "x-message-ttl": round(delay_s * 1000),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": lane_name(ns, agent_id, lane),
    }


def _durable_arguments(queue_type: QueueType) -> dict[str, Any]:
    """The type of a durable queue, and for a quorum one at-least-once dead-lettering.

    ``at-least-once`` keeps a message in the queue until the dead-letter target
    confirmed it (RabbitMQ 3.10), and needs ``reject-publish`` overflow.
    """
    if queue_type == "classic":
        return {"x-queue-type": "classic"}
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def dead_queue_arguments(queue_type: QueueType = DEFAULT_QUEUE_TYPE) -> dict[str, Any]:
    """``{ns}.dead``: a plain durable queue that keeps what nobody could handle."""
    return {"x-queue-type": queue_type}


def record_arguments(queue_type: QueueType = DEFAULT_QUEUE_TYPE) -> dict[str, Any]:
    """``{ns}.topology`` keeps only the newest record: publishing one drops the older."""
    return {"x-queue-type": queue_type, "x-max-length": 1}


def route_binding_key(*, msg_type: str = "*", priority: str = "*", sender: str = "*") -> str:
    """The binding key of a route: only recipient-less messages, narrowed by the words given.

    ``route_binding_key(sender="bob") -> "*.*.bob.-"``; ``route_binding_key() -> "*.*.*.-"``.
    """
    return f"{msg_type}.{priority}.{sender}.{NO_AGENT}"


def routing_key(message: Message) -> str:
    """``{type}.{priority}.{sender}.{recipient}``, with ``-`` for an empty agent id.

    >>> routing_key(Message(sender="a", recipient="", type="task"))
    'task.2.a.-'
    """
    return (
        f"{message.type.value}.{int(message.priority)}."
        f"{message.sender or NO_AGENT}.{message.recipient or NO_AGENT}"
    )


def inbox_arguments(
    ns: str,
    *,
    max_length: int | None = None,
    queue_type: QueueType = DEFAULT_QUEUE_TYPE,
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
) -> dict[str, Any]:
    """Declaration arguments of an inbox (classic) or of each lane (quorum); every
    declarer must use the same ones.

    ``reject-publish`` makes a full inbox refuse (the sender gets a nack and an
    :class:`~amqp_agents.errors.InboxFullError`) instead of silently dropping its head.
    A quorum lane dead-letters a message the broker delivered ``delivery_limit`` times
    without an ack (a message that kills its agent's process) with reason
    ``delivery_limit``: RabbitMQ's ``x-delivery-limit`` counts the returns it lets
    pass, one fewer than the deliveries.
    """
    args: dict[str, Any] = _durable_arguments(queue_type)
    args["x-dead-letter-exchange"] = dead_letter_exchange_name(ns)
    if queue_type == "classic":
        args["x-max-priority"] = INBOX_MAX_PRIORITY
        args["x-overflow"] = "reject-publish"
    else:
        args["x-delivery-limit"] = delivery_limit - 1
    if max_length is not None:
        args["x-max-length"] = max_length
    return args


def history_arguments(
    *, max_age: str = "7D", max_bytes: int = 1_000_000_000, replicas: int | None = None
) -> dict[str, Any]:
    """Arguments of the history stream: retention by age and by size; ``replicas``
    (``x-initial-cluster-size``) nodes keep it (None: the broker's default, all)."""
    args: dict[str, Any] = {
        "x-queue-type": "stream",
        "x-max-age": max_age,
        "x-max-length-bytes": max_bytes,
        "x-stream-max-segment-size-bytes": min(max_bytes // 4, 100_000_000),
    }
    if replicas is not None:
        args["x-initial-cluster-size"] = replicas
    return args


def addressed_to(routing_key: str | None, recipient: str, ns: str, agent_id: str) -> bool:
    """Whether a delivery found in ``agent_id``'s inbox was sent to it.

    The routing key is what the broker routed on and held against the publisher's
    topic permission. CC and BCC headers (which RabbitMQ before 4.0.x does not check)
    put a copy into more inboxes under the original key, so the key must name the
    agent (or ``-``: a routed message), or be the name of the inbox or one of its lanes
    (a retry back from the agent's retry queue, or a foreign client on the default
    exchange); the recipient header must agree.

    >>> addressed_to("task.2.bob.writer", "writer", "agents", "writer")
    True
    >>> addressed_to("task.2.bob.-", "", "agents", "writer")  # routed to it
    True
    >>> addressed_to("agents.inbox.writer", "writer", "agents", "writer")  # a retry
    True
    >>> addressed_to("agents.inbox.writer.high", "writer", "agents", "writer")  # a retry
    True
    >>> addressed_to("task.2.bob.reader", "reader", "agents", "writer")  # a CC copy
    False
    """
    if recipient and recipient != agent_id:
        return False
    if routing_key in {lane_name(ns, agent_id, lane) for lane in LANES}:
        return True
    words = (routing_key or "").split(".")
    return len(words) == 4 and words[3] in (agent_id, NO_AGENT)


def may_reply_to(ns: str, queue: str) -> bool:
    """Whether an agent may publish an answer into ``queue`` (a request's ``reply_to``).

    The namespace's reply queues are answered through :func:`reply_exchange_name`;
    server-named queues and direct reply-to only through the default exchange, which
    reaches any queue: a request naming someone's inbox would have the agent write
    into it on the requester's behalf. So only reply queues qualify.

    >>> may_reply_to("agents", "agents.reply.bob.0f3a")
    True
    >>> may_reply_to("agents", "amq.gen-JzTY20BRgKO")
    True
    >>> may_reply_to("agents", "agents.inbox.writer")
    False
    """
    return queue.startswith((f"{ns}.reply.", "amq.gen-", "amq.rabbitmq.reply-to"))
