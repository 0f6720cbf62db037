"""What a configuration needs on the broker, and how that differs from what is there.

Pure: :func:`layout_of` turns a configuration into the exchanges, queues and bindings
its namespace needs (the names and arguments of docs/wire-format.md, from
:mod:`amqp_agents.wire`); :func:`plan` compares that with what a broker inspection
found (:func:`amqp_agents.topology.inspect_layout`) and says what ``topology apply``
would do::

    layout_of(config)          -> Layout(exchanges=[agents (topic), agents.dlx (fanout),
                                                    agents.replies (topic),
                                                    agents.retry.researcher (direct), ...],
                                         queues=[agents.dead, agents.history,
                                                 agents.inbox.researcher, ...],
                                         bindings=[agents -> agents.inbox.researcher
                                                   '*.*.*.researcher', ...])
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

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from . import wire
from .config import AgentsConfig, RetryConfig
from .routing import compile_rule

ExchangeType = Literal["topic", "fanout", "direct"]
Action = Literal["create", "bind", "conflict", "stale", "unchecked"]
Kind = Literal["exchange", "queue", "binding"]

RECORD_ARGUMENTS: Mapping[str, Any] = {"x-queue-type": "classic", "x-max-length": 1}
"""The record queue keeps only the newest record: publishing one drops the older."""
DEAD_QUEUE_ARGUMENTS: Mapping[str, Any] = {"x-queue-type": "classic"}
"""As :class:`amqp_agents.topology.Topology` declares ``{ns}.dead``."""


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
    """``exchange -> queue`` with a binding key."""

    exchange: str
    queue: str
    key: str


@dataclass(frozen=True, slots=True)
class Layout:
    """Everything one namespace needs on the broker, in declaration order."""

    namespace: str
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    bindings: tuple[BindingSpec, ...]

    def without_record(self) -> Layout:
        """The layout agents need: all but the record only ``topology apply`` uses."""
        record = wire.topology_record_name(self.namespace)
        queues = tuple(q for q in self.queues if q.name != record)
        return Layout(self.namespace, self.exchanges, queues, self.bindings)


def retry_delays(retry: RetryConfig) -> list[float]:
    """The delays an agent with this policy actually retries after, each once.

    ``RetryConfig(max_attempts=4, delays_s=(1, 5)) -> [1.0, 5.0]`` (the last repeats);
    ``RetryConfig(max_attempts=1) -> []`` (no retry, no retry queue).
    """
    delays = (
        retry.delays_s[min(i, len(retry.delays_s) - 1)] for i in range(retry.max_attempts - 1)
    )
    return list(dict.fromkeys(float(d) for d in delays))


def layout_of(config: AgentsConfig) -> Layout:
    """The exchanges, queues and bindings ``config``'s namespace needs.

    Inboxes for every configured and external agent (a route destination must keep
    its messages before its agent starts), a retry queue per delay an agent uses (on
    the agent's own retry exchange), the dead letters, the history stream (also bound
    to the replies exchange), and each route's bindings on inboxes and history. Route
    patterns compile without importing filters or transforms.
    """
    broker = config.broker
    ns = broker.namespace
    traffic = wire.exchange_name(ns)
    dlx = wire.dead_letter_exchange_name(ns)
    replies = wire.reply_exchange_name(ns)
    history = wire.history_name(ns)
    exchanges = [
        ExchangeSpec(traffic, "topic", "agent traffic"),
        ExchangeSpec(dlx, "fanout", "dead letters"),
        ExchangeSpec(replies, "topic", "replies"),
    ]
    queues = [
        QueueSpec(wire.dead_queue_name(ns), DEAD_QUEUE_ARGUMENTS, "dead letters"),
        QueueSpec(
            history,
            wire.history_arguments(
                max_age=broker.history_max_age, max_bytes=broker.history_max_bytes
            ),
            "history",
        ),
    ]
    bindings = [
        BindingSpec(dlx, wire.dead_queue_name(ns), ""),
        BindingSpec(replies, history, wire.history_reply_binding_key(ns)),
    ]
    inboxes = {agent.id: agent.inbox.max_length for agent in config.agents}
    inboxes.update({agent_id: None for agent_id in config.external_agents})
    for agent_id, max_length in inboxes.items():
        inbox = wire.inbox_name(ns, agent_id)
        external = " (external)" if agent_id in config.external_agents else ""
        queues.append(
            QueueSpec(
                inbox,
                wire.inbox_arguments(ns, max_length=max_length),
                f"inbox of {agent_id}{external}",
            )
        )
        key = wire.inbox_binding_key(agent_id)
        bindings += [BindingSpec(traffic, inbox, key), BindingSpec(traffic, history, key)]
    for agent in config.agents:
        delays = retry_delays(agent.retry)
        if delays:
            retry = wire.retry_exchange_name(ns, agent.id)
            exchanges.append(ExchangeSpec(retry, "direct", f"retries of {agent.id}"))
        for delay in delays:
            name = wire.retry_queue_name(ns, agent.id, delay)
            queues.append(
                QueueSpec(
                    name,
                    wire.retry_queue_arguments(ns, agent.id, delay),
                    f"retries of {agent.id} after {delay:g}s",
                )
            )
            bindings.append(BindingSpec(retry, name, name))
    for route in config.routes:
        if route.filter is not None:
            continue  # the broker cannot filter: the sender addresses the copies (BCC)
        for key in compile_rule(route.pattern, config.agent_ids).binding_keys:
            for dest in route.destinations:
                bindings.append(BindingSpec(traffic, wire.inbox_name(ns, dest), key))
            bindings.append(BindingSpec(traffic, history, key))
    queues.append(QueueSpec(wire.topology_record_name(ns), RECORD_ARGUMENTS, "apply record"))
    return Layout(ns, tuple(exchanges), tuple(queues), tuple(dict.fromkeys(bindings)))


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
