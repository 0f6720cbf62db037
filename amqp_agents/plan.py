"""Comparing a layout with what a broker has: what ``topology plan`` shows and ``apply`` does.

Pure. :func:`plan` compares a :class:`~amqp_agents.layout.Layout` with what a broker
inspection found (:func:`amqp_agents.topology.inspect_layout`)::

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

from .layout import BindingSpec, Layout

Action = Literal["create", "bind", "conflict", "stale", "unchecked"]
Kind = Literal["exchange", "queue", "binding"]


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
    def other_queue_type(self) -> list[Step]:
        """Conflicts over the queue type: the namespace exists as classic and the
        configuration wants quorum, or the other way round (docs/deploy.md says how to
        move a namespace)."""
        return [s for s in self.conflicts if s.kind == "queue" and "x-queue-type" in s.detail]

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
