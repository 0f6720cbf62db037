"""The broker layout of a namespace, the one place that knows it; and how the broker differs.

Pure. Every exchange, queue (with its arguments) and binding a namespace needs comes
from the functions here, one per piece, each returning a :class:`Layout` of specs (the
names and arguments of docs/wire-format.md, from :mod:`amqp_agents.wire`)::

    base_layout(ns, options)             the traffic, dead-letter and replies exchanges,
                                         {ns}.dead, the {ns}.history stream
    inbox_layout(ns, agent_id, ...)      an inbox, bound for its agent and for history
    retry_layout(ns, agent_id, delays)   an agent's retry exchange and retry queues
    route_layout(ns, key, destinations)  a route key's bindings on inboxes and history
    record_layout(ns)                    the queue where ``topology apply`` records
    layout_of(config)                    all of them for a configuration

Who reads them: :class:`amqp_agents.topology.Topology` declares them piece by piece
at run time, ``topology plan/apply`` compares and declares :func:`layout_of`,
:func:`amqp_agents.diagram.mermaid` draws it and
:func:`amqp_agents.topology.delete_namespace` deletes what they name. So a setting
that changes the shape of a namespace (the queue type, history on or off) is one
change to :class:`NamespaceOptions` and the functions that read it.

:func:`plan` compares a layout with what a broker inspection found
(:func:`amqp_agents.topology.inspect_layout`) and says what ``topology apply`` would
do::

    plan(layout, observed)     -> Plan(steps=[create queue agents.inbox.writer,
                                              conflict queue agents.inbox.researcher, ...])

AMQP can check that an exchange or queue exists (a passive declare) and whether its
arguments differ (a redeclare fails with PRECONDITION_FAILED), but it cannot list
bindings. So ``apply`` records the bindings it made in ``{ns}.topology`` and the plan
trusts that record: a binding is "present" when both its ends exist and the record
has it. ``apply`` only ever adds: a binding recorded earlier that the configuration no
longer has is reported as stale and left in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from . import wire
from .retry import RetryPolicy

if TYPE_CHECKING:  # only for layout_of's signature: the run-time path never loads it
    from .config_schema import AgentsConfig

ExchangeType = Literal["topic", "fanout", "direct"]
Action = Literal["create", "bind", "conflict", "stale", "unchecked"]
Kind = Literal["exchange", "queue", "binding"]

RECORD_ARGUMENTS: Mapping[str, Any] = {"x-queue-type": "classic", "x-max-length": 1}
"""The record queue keeps only the newest record: publishing one drops the older."""
DEAD_QUEUE_ARGUMENTS: Mapping[str, Any] = {"x-queue-type": "classic"}
"""``{ns}.dead``: a plain durable queue that keeps what nobody could handle."""


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """Settings of a namespace that change what its layout is; every declarer must agree.

    Attributes:
        history_max_age: retention of the history stream by age ("7D", "12h").
        history_max_bytes: retention of the history stream by size.

    A future setting of the same kind (the queue type of inboxes, history on or off)
    is a field here, read by the layout functions below, and nowhere else.
    """

    history_max_age: str = "7D"
    history_max_bytes: int = 1_000_000_000


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


def base_layout(ns: str, options: NamespaceOptions = NamespaceOptions()) -> Layout:
    """What every namespace has before any agent: traffic, dead letters, replies, history.

    The history stream is bound to the replies exchange, so it keeps every reply.
    """
    traffic = wire.exchange_name(ns)
    dlx = wire.dead_letter_exchange_name(ns)
    replies = wire.reply_exchange_name(ns)
    dead = wire.dead_queue_name(ns)
    history = wire.history_name(ns)
    history_arguments = wire.history_arguments(
        max_age=options.history_max_age, max_bytes=options.history_max_bytes
    )
    return Layout(
        ns,
        exchanges=(
            ExchangeSpec(traffic, "topic", "agent traffic"),
            ExchangeSpec(dlx, "fanout", "dead letters"),
            ExchangeSpec(replies, "topic", "replies"),
        ),
        queues=(
            QueueSpec(dead, DEAD_QUEUE_ARGUMENTS, "dead letters"),
            QueueSpec(history, history_arguments, "history"),
        ),
        bindings=(
            BindingSpec(dlx, dead, "", "dead letters"),
            BindingSpec(replies, history, wire.history_reply_binding_key(ns), "every answer"),
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


def inbox_layout(
    ns: str, agent_id: str, *, max_length: int | None = None, external: bool = False
) -> Layout:
    """``{ns}.inbox.{agent_id}``, bound for messages to its agent (and history likewise).

    ``external``: the agent runs elsewhere (only the role text says so).
    """
    inbox = wire.inbox_name(ns, agent_id)
    key = wire.inbox_binding_key(agent_id)
    role = f"inbox of {agent_id}" + (" (external)" if external else "")
    return Layout(
        ns,
        queues=(QueueSpec(inbox, wire.inbox_arguments(ns, max_length=max_length), role),),
        bindings=(
            BindingSpec(wire.exchange_name(ns), inbox, key, f"to {agent_id}"),
            history_binding(ns, key),
        ),
    )


def retry_layout(ns: str, agent_id: str, delays: Iterable[float]) -> Layout:
    """The agent's own retry exchange and one retry queue per delay (none: no retry).

    A retry queue is bound under its own name; its messages expire after the delay
    back into the inbox (see :meth:`amqp_agents.topology.Topology.declare_retry_queue`).
    """
    delays = list(delays)
    if not delays:
        return Layout(ns)
    exchange = wire.retry_exchange_name(ns, agent_id)
    queues = tuple(
        QueueSpec(
            wire.retry_queue_name(ns, agent_id, delay),
            wire.retry_queue_arguments(ns, agent_id, delay),
            f"retries of {agent_id} after {delay:g}s",
        )
        for delay in delays
    )
    bindings = tuple(
        BindingSpec(exchange, queue.name, queue.name, f"retry after {delay:g}s")
        for queue, delay in zip(queues, delays, strict=True)
    )
    return Layout(
        ns, (ExchangeSpec(exchange, "direct", f"retries of {agent_id}"),), queues, bindings
    )


def agent_layout(
    ns: str, agent_id: str, *, max_length: int | None = None, retry: RetryPolicy | None = None
) -> Layout:
    """An agent run here: its inbox and the retry queues its policy uses."""
    delays = [] if retry is None else retry.distinct_delays()
    return inbox_layout(ns, agent_id, max_length=max_length) + retry_layout(ns, agent_id, delays)


def route_layout(ns: str, key: str, destinations: Sequence[str], *, pattern: str = "") -> Layout:
    """A compiled route's bindings: each destination's inbox and history, with ``key``.

    Route keys end in ``-`` (recipient-less messages), so they never overlap an
    inbox's own ``*.*.*.{agent_id}`` binding. ``pattern`` only names the route.
    """
    traffic = wire.exchange_name(ns)
    role = f"route {pattern}" if pattern else "route"
    inboxes = (BindingSpec(traffic, wire.inbox_name(ns, d), key, role) for d in destinations)
    return Layout(ns, bindings=(*inboxes, history_binding(ns, key)))


def record_layout(ns: str) -> Layout:
    """The queue where ``topology apply`` records the bindings it made."""
    name = wire.topology_record_name(ns)
    return Layout(ns, queues=(QueueSpec(name, RECORD_ARGUMENTS, "apply record"),))


def layout_of(config: AgentsConfig) -> Layout:
    """The exchanges, queues and bindings ``config``'s namespace needs.

    Inboxes for every configured and external agent (a route destination must keep
    its messages before its agent starts), a retry queue per delay an agent uses (on
    the agent's own retry exchange), the dead letters, the history stream, and each
    unfiltered route's bindings (its rule was compiled when the configuration was
    validated; a sender prefix binds one key per agent it names). A filtered route has
    none: the broker cannot run the filter, so the sender addresses the copies (BCC).
    """
    broker = config.broker
    ns = broker.namespace
    layout = base_layout(ns, namespace_options(config))
    for agent in config.agents:
        layout += inbox_layout(ns, agent.id, max_length=agent.inbox.max_length)
    for agent_id in config.external_agents:
        layout += inbox_layout(ns, agent_id, external=True)
    for agent in config.agents:
        layout += retry_layout(ns, agent.id, agent.retry.distinct_delays())
    for route in config.routes:
        if route.filter is not None:
            continue  # the broker cannot filter: the sender addresses the copies (BCC)
        for key in route.rule.binding_keys:
            layout += route_layout(ns, key, route.destinations, pattern=route.pattern)
    return layout + record_layout(ns)


def namespace_options(config: AgentsConfig) -> NamespaceOptions:
    """The :class:`NamespaceOptions` a configuration's broker section sets."""
    broker = config.broker
    return NamespaceOptions(broker.history_max_age, broker.history_max_bytes)


def retry_exchange_of(ns: str, queue: str) -> str | None:
    """The retry exchange that feeds ``queue`` if it is a retry queue of ``ns``, else None.

    ``retry_exchange_of("agents", "agents.retry.writer.200ms") -> "agents.retry.writer"``;
    for deleting what the run-time path declared, known only by queue names.
    """
    prefix = wire.retry_exchange_name(ns, "")
    agent_id, dot, delay = queue.removeprefix(prefix).rpartition(".")
    if not (queue.startswith(prefix) and delay.endswith("ms") and delay[:-2].isdigit()):
        return None
    if not dot or "." in agent_id:  # agent ids have no dots
        return None
    if wire.retry_queue_name(ns, agent_id, int(delay[:-2]) / 1000) != queue:
        return None
    return wire.retry_exchange_name(ns, agent_id)


# -- comparing with the broker ----------------------------------------------------------


class Status(Enum):
    """What an inspection found for one exchange or queue."""

    PRESENT = "present"
    MISSING = "missing"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Check:
    """The finding for one exchange or queue; ``detail`` is the broker's own words."""

    status: Status
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Observed:
    """What the broker has of a layout.

    Attributes:
        exchanges: exchange name -> finding.
        queues: queue name -> finding.
        recorded: the bindings the last ``topology apply`` recorded (None: no record).
    """

    exchanges: Mapping[str, Check]
    queues: Mapping[str, Check]
    recorded: frozenset[BindingSpec] | None = None

    def status(self, kind: Kind, name: str) -> Status:
        """The finding for ``name``; anything not inspected counts as missing."""
        checks = self.exchanges if kind == "exchange" else self.queues
        check = checks.get(name)
        return Status.MISSING if check is None else check.status


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a plan.

    Attributes:
        action: ``create`` / ``bind`` (what apply would do), ``conflict`` (exists with
            other arguments; apply refuses), ``stale`` (recorded, no longer configured;
            apply leaves it), ``unchecked`` (exists; this user may not compare its
            arguments).
        kind: exchange, queue or binding.
        name: the object's name (a binding: ``exchange -> queue``).
        detail: type, role and arguments; for a conflict the broker's message.
        binding: the binding, for binding steps.
    """

    action: Action
    kind: Kind
    name: str
    detail: str = ""
    binding: BindingSpec | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``topology apply`` would change, and what stands in its way."""

    layout: Layout
    steps: tuple[Step, ...]

    @property
    def changes(self) -> list[Step]:
        """The steps apply would carry out."""
        return [s for s in self.steps if s.action in ("create", "bind")]

    @property
    def conflicts(self) -> list[Step]:
        """Objects that exist with other arguments; apply refuses while there are any."""
        return [s for s in self.steps if s.action == "conflict"]

    @property
    def nothing_to_do(self) -> bool:
        """Everything exists as configured."""
        return not self.changes and not self.conflicts


def plan(layout: Layout, observed: Observed) -> Plan:
    """The steps that take the broker from ``observed`` to ``layout``.

    Exchanges, then queues, then bindings, in layout order. A binding is to do unless
    both its ends are present and the apply record has it (AMQP cannot list bindings).
    """
    steps: list[Step] = []
    for ex in layout.exchanges:
        steps += _object_step("exchange", ex.name, f"{ex.type}, {ex.role}", observed.exchanges)
    for queue in layout.queues:
        detail = f"{queue.role}; {format_arguments(queue.arguments)}"
        steps += _object_step("queue", queue.name, detail, observed.queues)
    recorded = observed.recorded or frozenset()
    for b in layout.bindings:
        present = (
            observed.status("exchange", b.exchange) is Status.PRESENT
            and observed.status("queue", b.queue) is Status.PRESENT
            and b in recorded
        )
        if not present:
            steps.append(Step("bind", "binding", binding_name(b), f"key {b.key!r}", b))
    for b in sorted(recorded - set(layout.bindings)):
        detail = f"key {b.key!r}: recorded by an earlier apply, not in this configuration"
        steps.append(Step("stale", "binding", binding_name(b), detail, b))
    return Plan(layout, tuple(steps))


def _object_step(kind: Kind, name: str, detail: str, checks: Mapping[str, Check]) -> list[Step]:
    check = checks.get(name, Check(Status.MISSING))
    if check.status is Status.MISSING:
        return [Step("create", kind, name, detail)]
    if check.status is Status.CONFLICT:
        return [Step("conflict", kind, name, check.detail)]
    if check.detail:
        return [Step("unchecked", kind, name, check.detail)]
    return []


def binding_name(binding: BindingSpec) -> str:
    """``"agents -> agents.inbox.writer"``."""
    return f"{binding.exchange} -> {binding.queue}"


def format_arguments(arguments: Mapping[str, Any]) -> str:
    """``{"x-max-length": 5, "x-queue-type": "classic"} -> "classic, x-max-length=5"``."""
    kind = str(arguments.get("x-queue-type", "classic"))
    rest = [f"{k}={v}" for k, v in sorted(arguments.items()) if k != "x-queue-type"]
    return ", ".join([kind, *rest])
