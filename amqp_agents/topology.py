"""Putting a namespace's layout on the broker: declaring, inspecting, applying, deleting.

What a namespace needs is :mod:`amqp_agents.layout`'s (pure) answer; this module is
its IO. :class:`Topology` declares the pieces at run time as agents start, so every
process declares the same names with the same arguments (a mismatch fails with
PRECONDITION_FAILED); in passive mode it only checks that they exist, for users
without configure permission. :func:`inspect_layout` and :func:`apply_layout` are
``topology plan`` and ``apply``; :func:`delete_namespace` is teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
    ExchangeType,
)
from aio_pika.exceptions import ChannelClosed, ChannelNotFoundEntity
from aiormq.exceptions import ChannelAccessRefused

from . import wire
from .errors import ErrorTable, QueueUnavailableError, TopologyError, map_exceptions
from .layout import (
    DEFAULT_INBOX,
    DEFAULT_OPTIONS,
    BindingSpec,
    ExchangeSpec,
    InboxOptions,
    Layout,
    NamespaceOptions,
    QueueSpec,
    base_layout,
    history_binding,
    inbox_layout,
    record_layout,
    retry_exchange_of,
    retry_layout,
    route_layout,
)
from .plan import Check, Observed, Plan, Status, Step, binding_name

log = logging.getLogger(__name__)


class Topology:
    """Declares one namespace's layout on a channel, piece by piece, as agents need it.

    What to declare comes from :mod:`amqp_agents.layout` only; this class adds the
    channel, the cache of what is declared, passive mode and the error texts.

    Args:
        channel: a channel used only for declarations (a failed declaration closes it).
        namespace: the name prefix.
        passive: check that things exist instead of creating them.
        options: the namespace's settings (queue type, history).
        inbox: the settings of every inbox declared here (length limit, delivery limit).
        inboxes: per-agent settings that override ``inbox``.
        declared: a set that records the name of every queue declared (for teardown).
    """

    def __init__(
        self,
        channel: AbstractChannel,
        namespace: str,
        *,
        passive: bool = False,
        options: NamespaceOptions = DEFAULT_OPTIONS,
        inbox: InboxOptions = DEFAULT_INBOX,
        inboxes: Mapping[str, InboxOptions] | None = None,
        declared: set[str] | None = None,
    ) -> None:
        self.channel = channel
        self.declared = declared if declared is not None else set()
        self.ns = namespace
        self.passive = passive
        self.options = options
        self.inbox = inbox
        self.inboxes = dict(inboxes or {})
        self._exchanges: dict[str, AbstractExchange] = {}
        self._queues: dict[str, AbstractQueue] = {}
        self._base_declared = False
        self._inboxes: dict[str, AbstractQueue] = {}
        self._retry_queues: dict[str, asyncio.Future[None]] = {}

    async def declare_base(self) -> AbstractExchange:
        """Declare :func:`~amqp_agents.layout.base_layout`; returns the traffic exchange."""
        await self._declare(base_layout(self.ns, self.options))
        self._base_declared = True
        return self._exchanges[wire.exchange_name(self.ns)]

    async def declare_inbox(self, agent_id: str) -> AbstractQueue:
        """Declare :func:`~amqp_agents.layout.inbox_layout` of ``agent_id``; cached.

        Returns its first queue: the inbox (classic), or its highest lane (quorum).
        """
        queue = self._inboxes.get(agent_id)
        if queue is not None:
            return queue
        wire.validate_namespace(self.ns)
        await self._ensure_base()
        layout = inbox_layout(
            self.ns, agent_id, self.options, self.inboxes.get(agent_id, self.inbox)
        )
        await self._declare(layout)
        queue = self._inboxes[agent_id] = self._queues[layout.queues[0].name]
        return queue

    def forget_inbox(self, agent_id: str) -> None:
        """Drop the cached declaration, so the next :meth:`declare_inbox` goes to the broker."""
        self._inboxes.pop(agent_id, None)

    async def declare_retry_queue(
        self, agent_id: str, delay_s: float, lane: wire.Lane = wire.NORMAL_LANE
    ) -> str:
        """Declare the queue that holds ``agent_id``'s failed messages for ``delay_s``.

        The agent publishes them to its own retry exchange (``{ns}.retry.{agent_id}``)
        with the queue's name as routing key. They expire after the delay and are
        dead-lettered straight back into the agent's inbox (by the broker, through the
        default exchange, so history does not record the retry twice). One queue per
        delay keeps expiry in order: per-message TTLs in one queue would expire only at
        its head. In quorum mode each lane has its own, leading back into it.

        Returns:
            the queue's name, which is also its binding key.
        """
        if self.options.queue_type == "classic":
            lane = wire.NORMAL_LANE  # a classic inbox is one queue, the NORMAL lane's name
        name = wire.retry_queue_name(self.ns, agent_id, delay_s, lane)
        # One declaration (queue AND binding) for handlers failing at once: unroutable else.
        declaring = self._retry_queues.get(name)
        if declaring is None:
            layout = retry_layout(self.ns, agent_id, [delay_s], self.options)
            queues = tuple(q for q in layout.queues if q.name == name)
            bindings = tuple(b for b in layout.bindings if b.queue == name)
            declare = self._declare(Layout(self.ns, layout.exchanges, queues, bindings))
            declaring = self._retry_queues[name] = asyncio.ensure_future(declare)
        try:
            await asyncio.shield(declaring)
        except BaseException:
            if declaring.done() and self._retry_queues.get(name) is declaring:
                del self._retry_queues[name]  # failed: the next retry declares again
            raise
        return name

    async def bind_route(self, routing_key: str, agent_id: str) -> None:
        """Bind ``agent_id``'s inbox, and history, with a route's ``routing_key``.

        Declares the inbox first (a routed message is kept before its agent starts).
        The bindings are :func:`~amqp_agents.layout.route_layout`'s.
        """
        await self.declare_inbox(agent_id)
        await self._declare(route_layout(self.ns, routing_key, [agent_id], self.options))

    async def bind_history(self, routing_key: str) -> None:
        """Make the history stream keep messages published with ``routing_key``.

        Kept for callers that bind routes in two steps; :meth:`bind_route` does both.
        Nothing to do when the namespace's history is off.
        """
        await self._ensure_base()
        if self.options.keeps_history:
            binding = history_binding(self.ns, routing_key)
            await self._declare(Layout(self.ns, bindings=(binding,)))

    async def bind_inbox(self, agent_id: str, routing_key: str) -> None:
        """Declare ``agent_id``'s inbox and bind it with ``routing_key`` (a route's).

        Kept for callers that bind routes in two steps; :meth:`bind_route` does both.
        """
        await self.declare_inbox(agent_id)
        route = route_layout(self.ns, routing_key, [agent_id], self.options)
        history = wire.history_name(self.ns)
        await self._declare(
            Layout(self.ns, bindings=tuple(b for b in route.bindings if b.queue != history))
        )

    async def _ensure_base(self) -> None:
        if not self._base_declared:
            await self.declare_base()

    async def _declare(self, layout: Layout) -> None:
        """Declare ``layout``'s exchanges and queues, then (unless passive) its bindings.

        A binding's ends must be declared on this channel by now (here or before).
        """
        for exchange in layout.exchanges:
            self._exchanges[exchange.name] = await self._exchange(exchange)
        for queue in layout.queues:
            self._queues[queue.name] = await self._queue(queue)
        if self.passive:
            return
        for binding in layout.bindings:
            await self._queues[binding.queue].bind(
                self._exchanges[binding.exchange], routing_key=binding.key
            )

    async def _exchange(self, spec: ExchangeSpec) -> AbstractExchange:
        with map_exceptions(self._errors("exchange", spec.name)):
            return await self.channel.declare_exchange(
                spec.name, ExchangeType(spec.type), durable=True, passive=self.passive
            )

    async def _queue(self, spec: QueueSpec) -> AbstractQueue:
        self.declared.add(spec.name)
        with map_exceptions(self._errors("queue", spec.name)):
            return await self.channel.declare_queue(
                spec.name, durable=True, passive=self.passive, arguments=dict(spec.arguments)
            )

    def _errors(self, kind: str, name: str) -> ErrorTable:
        """How a failed declaration of ``kind`` ``name`` maps to our errors."""
        return declaration_errors(kind, name, self.ns, passive=self.passive)


TEMPORARY_REPLIES = ("down or inaccessible", "timeout", "noproc", "nodedown")
"""RabbitMQ 3.10's words for a queue that cannot answer now: a classic queue's home node
is down (404 "home node 'rabbit@b' of durable queue 'q' ... is down or inaccessible"),
a quorum queue has no leader yet (``timeout``) or lost a member (``noproc``)."""


def is_temporary(exc: BaseException) -> bool:
    """Whether the broker refused because a queue is unavailable for now."""
    text = str(exc)
    return isinstance(exc, ChannelClosed) and any(word in text for word in TEMPORARY_REPLIES)


def declaration_errors(kind: str, name: str, ns: str, *, passive: bool) -> ErrorTable:
    """The one table of what the broker's refusal of a declaration or consume means::

        ACCESS_REFUSED                -> TopologyError: no configure permission (fatal)
        a node down, no leader yet    -> QueueUnavailableError (TEMPORARY_REPLIES): retried
        NOT_FOUND                     -> TopologyError: missing; passive: apply it (fatal)
        PRECONDITION_FAILED           -> TopologyError: other arguments or type (fatal)

    Refused credentials and a missing vhost fail the connection (BrokerConnectionError).
    """

    def refusal(exc: BaseException) -> BaseException:
        if isinstance(exc, ChannelAccessRefused):
            return TopologyError(
                f"not allowed to declare {kind} {name!r}: set `passive: true` for a user"
                f" without configure permission (docs/deploy.md): {exc}"
            )
        if is_temporary(exc):
            return QueueUnavailableError(f"{kind} {name!r} is unavailable for now: {exc}")
        if isinstance(exc, ChannelNotFoundEntity) or passive:
            hint = "run `amqp-agents topology apply` with a user that may configure it"
            return TopologyError(f"{kind} {name!r} does not exist ({hint}): {exc}")
        if "x-queue-type" in str(exc):
            return TopologyError(
                f"{kind} {name!r} exists as another queue type: every process of {ns!r}"
                " must use the namespace's queue_type (docs/deploy.md says how to move a"
                f" namespace from classic to quorum): {exc}"
            )
        return TopologyError(
            f"{kind} {name!r} exists with other arguments than {ns!r} needs "
            f"(see `amqp-agents topology plan`): {exc}"
        )

    return [((ChannelClosed,), refusal)]


async def delete_namespace(
    channel: AbstractChannel,
    namespace: str,
    queues: Sequence[str] = (),
    *,
    layout: Layout | None = None,
) -> None:
    """Delete what the layout specs name, for teardown.

    That is the namespace's base and apply record, everything ``layout`` names (e.g.
    :func:`~amqp_agents.layout.layout_of` a configuration), the queues in ``queues``
    (e.g. the names the run-time path declared) and the retry exchange of each retry
    queue among them.
    """
    everything = base_layout(namespace) + record_layout(namespace)
    if layout is not None:
        everything += layout
    names = {q.name for q in everything.queues} | set(queues)
    exchanges = {e.name for e in everything.exchanges}
    exchanges |= {e for e in (retry_exchange_of(namespace, q) for q in names) if e is not None}
    for name in sorted(names):
        # Explicitly unconditional: RabbitMQ refuses if_unused/if_empty on quorum queues.
        await channel.queue_delete(name, if_unused=False, if_empty=False)
    for name in sorted(exchanges):
        await channel.exchange_delete(name)


# -- inspecting and applying a whole layout (``amqp-agents topology plan / apply``) ------

Progress = Callable[[int, int], None]
"""Called with (done, total) as objects are inspected."""
StepDone = Callable[[Step], None]
"""Called after each step :func:`apply_layout` carried out."""
_Declare = Callable[[AbstractChannel, bool], Awaitable[object]]


async def inspect_layout(
    connection: AbstractConnection,
    layout: Layout,
    *,
    check_arguments: bool = True,
    progress: Progress | None = None,
) -> Observed:
    """Find out which of ``layout``'s exchanges and queues exist, and which conflict.

    A passive declare tells whether an object exists. With ``check_arguments``, an
    existing one is then declared again with our arguments: a no-op when they are
    equal, PRECONDITION_FAILED (reported, not raised) when they differ. That needs
    configure permission; without it the object is reported present, unchecked.
    """
    total = len(layout.exchanges) + len(layout.queues)
    checks: dict[str, Check] = {}
    declares: list[tuple[str, _Declare]] = [
        (ex.name, _exchange_declare(ex)) for ex in layout.exchanges
    ] + [(queue.name, _queue_declare(queue)) for queue in layout.queues]
    async with _Inspector(connection) as inspector:
        for name, declare in declares:
            checks[name] = await inspector.check(declare, check_arguments)
            if progress is not None:
                progress(len(checks), total)
        record = wire.topology_record_name(layout.namespace)
        recorded = None
        if record in checks and checks[record].status is Status.PRESENT:
            recorded = await inspector.read_record(record)
    exchanges = {ex.name: checks[ex.name] for ex in layout.exchanges}
    queues = {queue.name: checks[queue.name] for queue in layout.queues}
    return Observed(exchanges, queues, recorded)


async def apply_layout(
    connection: AbstractConnection, the_plan: Plan, *, on_step: StepDone | None = None
) -> None:
    """Carry out ``the_plan``: declare what is missing, bind, record the bindings.

    Every binding of the layout is bound again, reported or not: binding is
    idempotent, and it heals a record that no longer matches the broker. Nothing is
    ever deleted or unbound.

    Raises:
        TopologyError: the plan has conflicts (then nothing is done), or the broker
            refused a declaration (e.g. the user may not configure it).
    """
    if the_plan.conflicts:
        names = ", ".join(f"{s.kind} {s.name!r}" for s in the_plan.conflicts)
        verb = "exists" if len(the_plan.conflicts) == 1 else "exist"
        raise TopologyError(
            f"nothing applied: {names} {verb} with other arguments than the"
            " configuration's (see `amqp-agents topology plan`)"
        )
    layout = the_plan.layout
    exchanges = {ex.name: ex for ex in layout.exchanges}
    queues = {queue.name: queue for queue in layout.queues}
    reported = {s.binding: s for s in the_plan.steps if s.action == "bind"}
    channel = await connection.channel(publisher_confirms=True)
    try:
        for step in the_plan.steps:
            if step.action != "create":
                continue
            declare = (
                _exchange_declare(exchanges[step.name])
                if step.kind == "exchange"
                else _queue_declare(queues[step.name])
            )
            try:
                await declare(channel, False)
            except ChannelClosed as exc:
                raise _apply_error(step.kind, step.name, exc) from exc
            if on_step is not None:
                on_step(step)
        for binding in layout.bindings:
            try:
                queue = await channel.get_queue(binding.queue, ensure=False)
                await queue.bind(binding.exchange, routing_key=binding.key)
            except ChannelClosed as exc:
                raise _apply_error("binding", binding_name(binding), exc) from exc
            if on_step is not None and binding in reported:
                on_step(reported[binding])
        stale = [s.binding for s in the_plan.steps if s.action == "stale" and s.binding]
        await _write_record(channel, layout.namespace, [*layout.bindings, *stale])
    finally:
        if not channel.is_closed:
            await channel.close()


def _exchange_declare(spec: ExchangeSpec) -> _Declare:
    def declare(channel: AbstractChannel, passive: bool) -> Awaitable[object]:
        return channel.declare_exchange(
            spec.name, ExchangeType(spec.type), durable=True, passive=passive
        )

    return declare


def _queue_declare(spec: QueueSpec) -> _Declare:
    def declare(channel: AbstractChannel, passive: bool) -> Awaitable[object]:
        return channel.declare_queue(
            spec.name, durable=True, passive=passive, arguments=dict(spec.arguments)
        )

    return declare


def _apply_error(kind: str, name: str, exc: ChannelClosed) -> TopologyError:
    if isinstance(exc, ChannelAccessRefused):
        return TopologyError(
            f"not allowed to create {kind} {name!r}: `topology apply` needs a user with"
            f" configure permission on the namespace (docs/deploy.md): {exc}"
        )
    return TopologyError(f"cannot create {kind} {name!r}: {exc}")


class _Inspector:
    """Checks on a channel that is replaced after each failure (a failure closes it)."""

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None

    async def __aenter__(self) -> _Inspector:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._drop()

    async def check(self, declare: _Declare, check_arguments: bool) -> Check:
        """Passive declare; then, if it exists, a redeclare with our arguments."""
        try:
            await declare(await self._open(), True)
        except ChannelNotFoundEntity:
            await self._drop()
            return Check(Status.MISSING)
        except ChannelClosed as exc:
            await self._drop()
            return Check(Status.CONFLICT, str(exc))
        if not check_arguments:
            return Check(Status.PRESENT)
        try:
            await declare(await self._open(), False)
        except ChannelAccessRefused as exc:
            await self._drop()
            return Check(Status.PRESENT, f"arguments not checked: {exc}")
        except ChannelClosed as exc:
            # PRECONDITION_FAILED (other arguments) or RESOURCE_LOCKED (exclusive).
            await self._drop()
            return Check(Status.CONFLICT, str(exc))
        return Check(Status.PRESENT)

    async def read_record(self, name: str) -> frozenset[BindingSpec] | None:
        """The bindings recorded in ``name``, left in the queue (None: no usable record)."""
        try:
            queue = await (await self._open()).get_queue(name, ensure=False)
            message = await queue.get(no_ack=False, fail=False)
        except ChannelClosed as exc:
            await self._drop()
            log.warning("cannot read the apply record %s: %s", name, exc)
            return None
        if message is None:
            return None
        await message.nack(requeue=True)
        try:
            data = json.loads(message.body)
            return frozenset(BindingSpec(*map(str, item)) for item in data["bindings"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("the apply record %s is unreadable (%s); ignoring it", name, exc)
            return None

    async def _open(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel()
        return self._channel

    async def _drop(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()


async def _write_record(
    channel: AbstractChannel, namespace: str, bindings: Sequence[BindingSpec]
) -> None:
    """Replace the record (its queue keeps one message) with ``bindings``."""
    body = json.dumps(
        {"bindings": [[b.exchange, b.queue, b.key] for b in dict.fromkeys(bindings)]}
    ).encode()
    await channel.default_exchange.publish(
        aio_pika.Message(
            body, content_type=wire.CONTENT_TYPE, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        ),
        routing_key=wire.topology_record_name(namespace),
    )
