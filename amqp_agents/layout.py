"""The broker layout of a namespace, the one place that knows it.

Pure. Every exchange, queue (with its arguments) and binding a namespace needs comes
from the functions here, one per piece, each returning a :class:`Layout` of specs (the
names and arguments of docs/wire-format.md, from :mod:`amqp_agents.wire`)::

    base_layout(ns, options)             the traffic, dead-letter and replies exchanges,
<<<<<<< HEAD
                                         {ns}.dead, the {ns}.history stream, and the
                                         cancels and cards streams with their exchanges
=======
                                         {ns}.dead, the {ns}.history stream (unless
                                         history is off)
>>>>>>> main
    inbox_layout(ns, agent_id, options)  an inbox (classic) or its lanes (quorum), bound
                                         for its agent and for history
    retry_layout(ns, agent_id, delays, options)  an agent's retry exchange and queues
    route_layout(ns, key, destinations, options) a route key's bindings on inboxes and
                                         history
    record_layout(ns, options)           the queue where ``topology apply`` records
    layout_of(config)                    all of them for a configuration

The queue type (:attr:`NamespaceOptions.queue_type`) decides the shape: a classic
inbox is one priority queue bound with ``*.*.*.X``; a quorum inbox is one queue per
lane (:data:`amqp_agents.wire.LANES`), each bound with its own priority words, and
history is bound with the same per-lane keys, so a key no inbox takes reaches no
queue at all. With history ``off`` (:attr:`NamespaceOptions.history`) there is no
stream and no binding of it: every function below leaves them out.

Who reads them: :class:`amqp_agents.topology.Topology` declares them piece by piece
at run time, ``topology plan/apply`` compares and declares :func:`layout_of`,
:func:`amqp_agents.diagram.mermaid` draws it and
:func:`amqp_agents.topology.delete_namespace` deletes what they name. So a setting
that changes the shape of a namespace (the queue type, history on or off) is one
change to :class:`NamespaceOptions` and the functions that read it.

:mod:`amqp_agents.plan` compares a layout with what a broker has (``topology plan``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import wire
from .retry import RetryPolicy

if TYPE_CHECKING:  # only for layout_of's signature: the run-time path never loads it
    from .config_schema import AgentsConfig, InboxConfig

ExchangeType = Literal["topic", "fanout", "direct"]


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """Settings of a namespace that change what its layout is; every declarer must agree.

    Attributes:
        queue_type: ``quorum`` (replicated; inboxes are lanes) or ``classic`` (one
            node; inboxes are priority queues). See docs/wire-format.md.
        history_max_age: retention of the history stream by age ("7D", "12h").
        history_max_bytes: retention of the history stream by size.
        history_replicas: nodes that keep the history stream (None: all of them).
        history: ``stream`` (every message is kept in ``{ns}.history``) or ``off`` (no
            stream, no history bindings; history queries raise HistoryOffError).

    A setting of this kind is a field here, read by the layout functions below, and
    nowhere else.
    """

    queue_type: wire.QueueType = wire.DEFAULT_QUEUE_TYPE
    history_max_age: str = "7D"
    history_max_bytes: int = 1_000_000_000
    history_replicas: int | None = None
    history: wire.HistoryMode = wire.DEFAULT_HISTORY

    @property
    def keeps_history(self) -> bool:
        """Whether the namespace has the ``{ns}.history`` stream and its bindings."""
        return self.history == "stream"


@dataclass(frozen=True, slots=True)
class InboxOptions:
    """Settings of one agent's inbox; every declarer of that inbox must agree.

    Attributes:
        max_length: messages the inbox (each lane, in quorum mode) holds at most.
        delivery_limit: deliveries without an ack before a quorum lane dead-letters a
            message (classic inboxes have no such limit).
    """

    max_length: int | None = None
    delivery_limit: int = wire.DEFAULT_DELIVERY_LIMIT

    def per_agent(
        self,
        max_lengths: Mapping[str, int | None] | None,
        delivery_limits: Mapping[str, int] | None,
    ) -> dict[str, InboxOptions]:
        """The options of each agent named in either mapping, these where it is not."""
        lengths, limits = dict(max_lengths or {}), dict(delivery_limits or {})
        return {
            agent_id: InboxOptions(
                lengths.get(agent_id, self.max_length),
                limits.get(agent_id, self.delivery_limit),
            )
            for agent_id in {*lengths, *limits}
        }


def nack_means_unavailable(options: NamespaceOptions, inbox: InboxOptions) -> bool:
    """Whether the broker's nack of a message for this inbox means that a lane has no
    majority of its nodes: a quorum lane without a length limit is never full."""
    return options.queue_type == "quorum" and inbox.max_length is None


DEFAULT_OPTIONS = NamespaceOptions()
DEFAULT_INBOX = InboxOptions()


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """An exchange the namespace needs (always durable)."""

    name: str
    type: ExchangeType
    role: str


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue the namespace needs (always durable), with its declaration arguments."""

    name: str
    arguments: Mapping[str, Any]
    role: str


@dataclass(frozen=True, slots=True, order=True)
class BindingSpec:
    """``exchange -> queue`` with a binding key; ``role`` is for people, not compared."""

    exchange: str
    queue: str
    key: str
    role: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Layout:
    """Exchanges, queues and bindings of one namespace, in declaration order.

    A whole namespace (:func:`layout_of`) or one piece of it; ``a + b`` is both, each
    exchange, queue and binding once, in order of first appearance.
    """

    namespace: str
    exchanges: tuple[ExchangeSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()
    bindings: tuple[BindingSpec, ...] = ()

    def __add__(self, other: Layout) -> Layout:
        if other.namespace != self.namespace:
            raise ValueError(f"cannot join layouts of {self.namespace!r} and {other.namespace!r}")
        return Layout(
            self.namespace,
            _first_of_each_name((*self.exchanges, *other.exchanges)),
            _first_of_each_name((*self.queues, *other.queues)),
            tuple(dict.fromkeys((*self.bindings, *other.bindings))),
        )

    def without_record(self) -> Layout:
        """The layout agents need: all but the record only ``topology apply`` uses."""
        record = wire.topology_record_name(self.namespace)
        queues = tuple(q for q in self.queues if q.name != record)
        return Layout(self.namespace, self.exchanges, queues, self.bindings)


_Named = TypeVar("_Named", ExchangeSpec, QueueSpec)


def _first_of_each_name(specs: Iterable[_Named]) -> tuple[_Named, ...]:
    """A name is one object on the broker: the first spec of each name, in order."""
    first: dict[str, _Named] = {}
    for spec in specs:
        first.setdefault(spec.name, spec)
    return tuple(first.values())


# -- the pieces -------------------------------------------------------------------------


def base_layout(ns: str, options: NamespaceOptions = DEFAULT_OPTIONS) -> Layout:
    """What every namespace has before any agent: traffic, dead letters, replies,
    history, and the two control streams (cancel records, agent cards).

    The history stream is bound to the replies exchange, so it keeps every reply. With
    history off, neither the stream nor that binding. Each control stream is fed by a
    fanout exchange of its own name (its only binding); they are there either way.
    """
    traffic = wire.exchange_name(ns)
    dlx = wire.dead_letter_exchange_name(ns)
    replies = wire.reply_exchange_name(ns)
    dead = wire.dead_queue_name(ns)
    history = wire.history_name(ns)
    cancels, cards = wire.cancel_stream_name(ns), wire.card_stream_name(ns)
    cancel_arguments = wire.control_stream_arguments(
        max_bytes=wire.CANCEL_STREAM_MAX_BYTES, max_age=options.history_max_age
    )
    card_arguments = wire.control_stream_arguments(max_bytes=wire.CARD_STREAM_MAX_BYTES)
    history_arguments = wire.history_arguments(
        max_age=options.history_max_age,
        max_bytes=options.history_max_bytes,
        replicas=options.history_replicas,
    )
    base = Layout(
        ns,
        exchanges=(
            ExchangeSpec(traffic, "topic", "agent traffic"),
            ExchangeSpec(dlx, "fanout", "dead letters"),
            ExchangeSpec(replies, "topic", "replies"),
            ExchangeSpec(wire.cancel_exchange_name(ns), "fanout", "cancel records"),
            ExchangeSpec(wire.card_exchange_name(ns), "fanout", "agent cards"),
        ),
        queues=(QueueSpec(dead, wire.dead_queue_arguments(options.queue_type), "dead letters"),),
        bindings=(BindingSpec(dlx, dead, "", "dead letters"),),
    )
    if options.keeps_history:
        base += Layout(
            ns,
            queues=(QueueSpec(history, history_arguments, "history"),),
            bindings=(
                BindingSpec(replies, history, wire.history_reply_binding_key(ns), "every answer"),
            ),
        )
    return base + Layout(
        ns,
        queues=(
            QueueSpec(cancels, cancel_arguments, "cancel records"),
            QueueSpec(cards, card_arguments, "agent cards"),
        ),
        bindings=(
            BindingSpec(wire.cancel_exchange_name(ns), cancels, "", "cancel records"),
            BindingSpec(wire.card_exchange_name(ns), cards, "", "agent cards"),
        ),
    )


def history_binding(ns: str, key: str) -> BindingSpec:
    """History gets every key an inbox or a route gets, on the traffic exchange.

    So routed and addressed traffic is in history, and a message to an agent without
    inbox reaches no queue at all (the sender learns of an unknown recipient) instead
    of silently landing in history only. The one place of that rule.
    """
    return BindingSpec(
        wire.exchange_name(ns), wire.history_name(ns), key, "all addressed and routed traffic"
    )


def _inbox_bindings(
    ns: str, agent_id: str, key: str, role: str, options: NamespaceOptions
) -> tuple[BindingSpec, ...]:
    """``key`` (a whole inbox's) on the agent's inbox or lanes, and the same on history.

    A quorum lane is bound with its own priority words only (``*.4.*.X``, ``*.3.*.X``),
    and history with the lanes' keys, never with more: a key that reaches no inbox
    must reach no queue, or the broker would confirm a message no inbox has. With
    history off, the inbox's bindings only.
    """
    traffic = wire.exchange_name(ns)
    if options.queue_type == "classic":
        lanes = [BindingSpec(traffic, wire.inbox_name(ns, agent_id), key, role)]
    else:
        lanes = [
            BindingSpec(traffic, wire.lane_name(ns, agent_id, lane), lane_key, role)
            for lane in wire.LANES
            for lane_key in wire.lane_binding_keys(key, lane)
        ]
    if not options.keeps_history:
        return tuple(lanes)
    return (*lanes, *(history_binding(ns, b.key) for b in lanes))


def inbox_layout(
    ns: str,
    agent_id: str,
    options: NamespaceOptions = DEFAULT_OPTIONS,
    inbox: InboxOptions = DEFAULT_INBOX,
    *,
    external: bool = False,
) -> Layout:
    """``{ns}.inbox.{agent_id}`` (classic) or its lanes (quorum), highest priority
    first, bound for messages to its agent (and history likewise).

    ``external``: the agent runs elsewhere (only the role text says so).
    """
    role = f"inbox of {agent_id}" + (" (external)" if external else "")
    arguments = wire.inbox_arguments(
        ns,
        max_length=inbox.max_length,
        queue_type=options.queue_type,
        delivery_limit=inbox.delivery_limit,
    )
    names = wire.inbox_queue_names(ns, agent_id, options.queue_type)
    lane_roles = (
        [role] if len(names) == 1 else [f"{role}, {_lane_words(lane)}" for lane in wire.LANES]
    )
    key = wire.inbox_binding_key(agent_id)
    return Layout(
        ns,
        queues=tuple(QueueSpec(n, arguments, r) for n, r in zip(names, lane_roles, strict=True)),
        bindings=_inbox_bindings(ns, agent_id, key, f"to {agent_id}", options),
    )


def _lane_words(lane: wire.Lane) -> str:
    return "priorities " + "+".join(str(p) for p in lane.priorities)


def _lanes(options: NamespaceOptions) -> tuple[wire.Lane, ...]:
    """The lanes an inbox has: a classic inbox is the one NORMAL-named queue."""
    return (wire.NORMAL_LANE,) if options.queue_type == "classic" else wire.LANES


def retry_layout(
    ns: str, agent_id: str, delays: Iterable[float], options: NamespaceOptions = DEFAULT_OPTIONS
) -> Layout:
    """The agent's own retry exchange and one retry queue per delay (and lane; none:
    no retry).

    A retry queue is bound under its own name; its messages expire after the delay
    back into the inbox, or the lane they came for (see
    :meth:`amqp_agents.topology.Topology.declare_retry_queue`).
    """
    delays = list(delays)
    if not delays:
        return Layout(ns)
    exchange = wire.retry_exchange_name(ns, agent_id)
    queues = [
        QueueSpec(
            wire.retry_queue_name(ns, agent_id, delay, lane),
            wire.retry_queue_arguments(
                ns, agent_id, delay, queue_type=options.queue_type, lane=lane
            ),
            f"retries of {agent_id} after {delay:g}s",
        )
        for lane in _lanes(options)
        for delay in delays
    ]
    bindings = tuple(
        BindingSpec(exchange, queue.name, queue.name, queue.role.replace("retries of", "retry of"))
        for queue in queues
    )
    return Layout(
        ns, (ExchangeSpec(exchange, "direct", f"retries of {agent_id}"),), tuple(queues), bindings
    )


def agent_layout(
    ns: str,
    agent_id: str,
    options: NamespaceOptions = DEFAULT_OPTIONS,
    inbox: InboxOptions = DEFAULT_INBOX,
    *,
    retry: RetryPolicy | None = None,
) -> Layout:
    """An agent run here: its inbox and the retry queues its policy uses."""
    delays = [] if retry is None else retry.distinct_delays()
    return inbox_layout(ns, agent_id, options, inbox) + retry_layout(ns, agent_id, delays, options)


def route_layout(
    ns: str,
    key: str,
    destinations: Sequence[str],
    options: NamespaceOptions = DEFAULT_OPTIONS,
    *,
    pattern: str = "",
) -> Layout:
    """A compiled route's bindings: each destination's inbox (lanes) and history.

    Route keys end in ``-`` (recipient-less messages), so they never overlap an
    inbox's own ``*.*.*.{agent_id}`` binding. ``pattern`` only names the route.
    """
    role = f"route {pattern}" if pattern else "route"
    history = wire.history_name(ns)
    bindings = [b for d in destinations for b in _inbox_bindings(ns, d, key, role, options)]
    inboxes = [b for b in bindings if b.queue != history]
    return Layout(ns, bindings=tuple(dict.fromkeys(inboxes + bindings)))


def record_layout(ns: str, options: NamespaceOptions = DEFAULT_OPTIONS) -> Layout:
    """The queue where ``topology apply`` records the bindings it made."""
    name = wire.topology_record_name(ns)
    arguments = wire.record_arguments(options.queue_type)
    return Layout(ns, queues=(QueueSpec(name, arguments, "apply record"),))


def layout_of(config: AgentsConfig) -> Layout:
    """The exchanges, queues and bindings ``config``'s namespace needs.

    Inboxes for every configured and external agent (a route destination must keep
    its messages before its agent starts), a retry queue per delay an agent uses (on
    the agent's own retry exchange), the dead letters, the history stream, and each
    unfiltered route's bindings (its rule was compiled when the configuration was
    validated; a sender prefix binds one key per agent it names). A filtered route has
    none: the broker cannot run the filter, so the sender addresses the copies (BCC).
    """
    ns = config.broker.namespace
    options = namespace_options(config)
    layout = base_layout(ns, options)
    for agent in config.agents:
        layout += inbox_layout(ns, agent.id, options, inbox_options(agent.inbox))
    for agent_id in config.external_agents:
        layout += inbox_layout(ns, agent_id, options, external=True)
    for agent in config.agents:
        layout += retry_layout(ns, agent.id, agent.retry.distinct_delays(), options)
    for route in config.routes:
        if route.filter is not None:
            continue  # the broker cannot filter: the sender addresses the copies (BCC)
        for key in route.rule.binding_keys:
            layout += route_layout(ns, key, route.destinations, options, pattern=route.pattern)
    return layout + record_layout(ns, options)


def namespace_options(config: AgentsConfig) -> NamespaceOptions:
    """The :class:`NamespaceOptions` a configuration's broker section sets."""
    broker = config.broker
    return NamespaceOptions(
        queue_type=broker.queue_type,
        history_max_age=broker.history_max_age,
        history_max_bytes=broker.history_max_bytes,
        history_replicas=broker.history_replicas,
        history=broker.history,
    )


def inbox_options(inbox: InboxConfig) -> InboxOptions:
    """The :class:`InboxOptions` an agent's ``inbox`` section sets."""
    return InboxOptions(inbox.max_length, inbox.delivery_limit)


def retry_exchange_of(ns: str, queue: str) -> str | None:
    """The retry exchange that feeds ``queue`` if it is a retry queue of ``ns``, else None.

    ``retry_exchange_of("agents", "agents.retry.writer.200ms") -> "agents.retry.writer"``
    (and likewise for a lane's ``agents.retry.writer.high.200ms``); for deleting what
    the run-time path declared, known only by queue names.
    """
    prefix = wire.retry_exchange_name(ns, "")
    rest, dot, delay = queue.removeprefix(prefix).rpartition(".")
    if not (queue.startswith(prefix) and delay.endswith("ms") and delay[:-2].isdigit()):
        return None
    agent_id = rest.partition(".")[0]  # agent ids have no dots
    if not dot or not agent_id:
        return None
    delay_s = int(delay[:-2]) / 1000
    if all(wire.retry_queue_name(ns, agent_id, delay_s, lane) != queue for lane in wire.LANES):
        return None
    return wire.retry_exchange_name(ns, agent_id)
