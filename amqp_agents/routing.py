"""Routes: which inboxes a recipient-less message goes to, compiled to topic bindings.

A route says "messages like this go to these agents"::

    router = MessageRouter()
    router.add_route("type:task", ["researcher"])
    router.add_route("sender:agent_*", ["auditor"])
    router.add_filter("sender:agent_*", lambda m: m.priority >= 3)

Two places read the same routes. The broker: each route becomes topic bindings of its
destinations' inboxes (:func:`compile_rule` gives the keys), so one publish reaches
every inbox the route names, and no other: a pattern's bindings are exact, whoever
reads the inbox. A sender prefix has no topic form (``*`` is a whole word), so it
binds one key per known agent id that starts with it (the configuration's agents and
external agents): a prefix route matches only known senders. The consumer: a filter
is a function the broker cannot run, so a filtered route has no binding: the sending
client runs the filter and addresses a copy to each of the route's destinations that
keep the message (``BCC``: ``BrokerClient.send``). :meth:`MessageRouter.accept` applies
the transforms (and drops what bindings left from older routes deliver).
:meth:`MessageRouter.get_destinations` predicts the outcome of both; the integration
tests hold the broker to it.

Pure: nothing here does IO. A broker client given ``router=`` makes the bindings
(:class:`amqp_agents.client.BrokerClient`), and :func:`amqp_agents.admission.admit`
calls :meth:`MessageRouter.accept`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from . import wire
from .errors import NoRouteError, RoutingError
from .message import AGENT_ID_PATTERN, Message, MessageType

Filter = Callable[[Message], bool]
"""Keeps a route for a message (True) or drops the route's destinations (False)."""
Transform = Callable[[Message], Message]
"""Returns the message a destination sees; it gets a private copy to change."""

Attribute = Literal["*", "type", "priority", "sender"]

_PATTERN_FORMS = "'*', 'type:<type>', 'priority:<1-4>', 'sender:<id>' or 'sender:<prefix>*'"

# Used with fullmatch: "$" alone would let a trailing newline into a binding key.
_AGENT_ID = re.compile(AGENT_ID_PATTERN)
_SENDER_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_PRIORITY = re.compile(r"[1-4]")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A route pattern as the broker and the consumer use it.

    Attributes:
        pattern: the pattern as written.
        binding_keys: the topic bindings that deliver exactly the messages the pattern
            matches (a sender prefix: one per known sender it names; none if it names
            none).
        attribute: the message attribute the pattern tests (``*``: none).
        value: the value it is compared with (for a sender prefix: the prefix).
        senders: for a sender prefix, the known agent ids that start with it.
    """

    pattern: str
    binding_keys: tuple[str, ...]
    attribute: Attribute
    value: str = ""
    senders: tuple[str, ...] | None = None

    def matches(self, message: Message) -> bool:
        """Whether ``message`` matches the pattern (filters are not part of a rule)."""
        if self.attribute == "type":
            return message.type.value == self.value
        if self.attribute == "priority":
            return str(int(message.priority)) == self.value
        if self.attribute == "sender":
            if self.senders is not None:
                return message.sender in self.senders
            return message.sender == self.value
        return True

    def naming(self, senders: Iterable[str]) -> CompiledRule:
        """This rule with a sender prefix expanded to the ids of ``senders`` it names.

        Any other rule is returned as it is. A configuration compiles its patterns while
        validating each route and knows its agents only afterwards; this completes the
        rule without compiling the pattern again.
        """
        if self.senders is None:
            return self
        named = tuple(dict.fromkeys(s for s in senders if s.startswith(self.value)))
        keys = tuple(wire.route_binding_key(sender=s) for s in named)
        return replace(self, binding_keys=keys, senders=named)


def compile_rule(pattern: str, senders: Iterable[str] = ()) -> CompiledRule:
    """Compile a route pattern into the topic binding keys that deliver exactly its matches.

    Route keys end in ``-``: routes only ever see recipient-less messages. A sender
    prefix has no topic-binding form (``*`` stands for a whole word), so it binds one
    key per agent id of ``senders`` (the known agents) that starts with it::

        "*"              -> ("*.*.*.-",)
        "type:task"      -> ("task.*.*.-",)
        "priority:4"     -> ("*.4.*.-",)
        "sender:bob"     -> ("*.*.bob.-",)
        "sender:agent_*" -> ("*.*.agent_1.-", "*.*.agent_2.-")   senders agent_1, agent_2
        "type:job"       -> RoutingError   (not a message type)
        "recipient:bob"  -> RoutingError   (unknown pattern form)

    >>> compile_rule("sender:agent_*", ["agent_1", "bob", "agent_2"]).binding_keys
    ('*.*.agent_1.-', '*.*.agent_2.-')

    Raises:
        RoutingError: unknown pattern form or invalid value; the message lists the forms.
    """
    if pattern == "*":
        return CompiledRule(pattern, (wire.route_binding_key(),), attribute="*")
    kind, colon, value = pattern.partition(":")
    compile_value = _COMPILERS.get(kind) if colon else None
    if compile_value is None:
        raise RoutingError(f"unknown route pattern {pattern!r}: expected {_PATTERN_FORMS}")
    return compile_value(pattern, value, tuple(senders))


def _compile_type(pattern: str, value: str, senders: tuple[str, ...]) -> CompiledRule:
    if value not in {t.value for t in MessageType}:
        kinds = ", ".join(t.value for t in MessageType)
        raise RoutingError(f"route pattern {pattern!r}: {value!r} is not a message type ({kinds})")
    key = wire.route_binding_key(msg_type=value)
    return CompiledRule(pattern, (key,), attribute="type", value=value)


def _compile_priority(pattern: str, value: str, senders: tuple[str, ...]) -> CompiledRule:
    if not _PRIORITY.fullmatch(value):
        raise RoutingError(f"route pattern {pattern!r}: priority must be 1, 2, 3 or 4")
    key = wire.route_binding_key(priority=value)
    return CompiledRule(pattern, (key,), attribute="priority", value=value)


def _compile_sender(pattern: str, value: str, senders: tuple[str, ...]) -> CompiledRule:
    if value.endswith("*"):
        prefix = value[:-1]
        if not _SENDER_PREFIX.fullmatch(prefix):
            raise RoutingError(
                f"route pattern {pattern!r}: a sender prefix must be the non-empty start of"
                " an agent id, with '*' only at the end (use '*' alone to match every sender)"
            )
        unnamed = CompiledRule(pattern, (), attribute="sender", value=prefix, senders=())
        return unnamed.naming(senders)
    _check_agent_id(pattern, value, "sender")
    key = wire.route_binding_key(sender=value)
    return CompiledRule(pattern, (key,), attribute="sender", value=value)


_COMPILERS: dict[str, Callable[[str, str, tuple[str, ...]], CompiledRule]] = {
    "type": _compile_type,
    "priority": _compile_priority,
    "sender": _compile_sender,
}


@dataclass(frozen=True, slots=True)
class RouteVerdict:
    """How one route decides about a message (see :meth:`MessageRouter.explain`).

    Attributes:
        pattern: the route's pattern.
        binding_keys: its topic bindings.
        destinations: where it sends what it takes.
        matches: the pattern matches the message.
        filtered_out: the route's filter returned False.
        filter_error: the filter raised (type and message); the route does not take it.
        transformed: the route has a transform its destinations' copies pass through.
    """

    pattern: str
    binding_keys: tuple[str, ...]
    destinations: tuple[str, ...]
    matches: bool
    filtered_out: bool = False
    filter_error: str | None = None
    transformed: bool = False

    @property
    def takes(self) -> bool:
        """The route sends the message to its destinations."""
        return self.matches and not self.filtered_out and self.filter_error is None


@dataclass(slots=True)
class _Route:
    """One route: a compiled pattern, where it sends, and its optional hooks."""

    rule: CompiledRule
    destinations: list[str]
    filter: Filter | None = None
    transform: Transform | None = None

    def takes(self, message: Message) -> bool:
        """The pattern matches and the filter (if any) keeps the message."""
        if not self.rule.matches(message):
            return False
        if self.filter is None:
            return True
        try:
            return bool(self.filter(message))
        except Exception as exc:
            exc.add_note(f"in the filter of route {self.rule.pattern!r}")
            raise

    def apply(self, message: Message) -> Message:
        """The message after this route's transform (if any)."""
        if self.transform is None:
            return message
        try:
            result = self.transform(message)
        except Exception as exc:
            exc.add_note(f"in the transform of route {self.rule.pattern!r}")
            raise
        if not isinstance(result, Message):
            raise RoutingError(
                f"the transform of route {self.rule.pattern!r} returned"
                f" {type(result).__name__}, not a Message"
            )
        return result


class MessageRouter:
    """Routes for recipient-less messages, with per-route filters and transforms.

    A route is known by its pattern, as in the tutorial: adding a route with a pattern
    that exists replaces its destinations and keeps its filter and transform. Routes
    are evaluated in the order they were first added. Filters and transforms run on
    both the sender's side (to refuse a message no route takes) and the consumer's, so
    they must be deterministic and quick; a transform gets a private copy to change.

    Args:
        senders: the known agent ids, which a sender-prefix route expands to (one
            binding each); a configuration's agents and external agents.
    """

    def __init__(self, senders: Iterable[str] = ()) -> None:
        self._routes: dict[str, _Route] = {}
        self.senders = tuple(dict.fromkeys(senders))

    def add_route(self, pattern: str | CompiledRule, destinations: Sequence[str]) -> None:
        """Send messages matching ``pattern`` to the inboxes of ``destinations``.

        ``pattern`` may come compiled already (a configuration compiles its routes
        while validating), so that it is compiled once on its way to the bindings; a
        sender prefix is then expanded to this router's ``senders``.

        Raises:
            RoutingError: bad pattern (see :func:`compile_rule`), a sender prefix that
                names no known sender, no destination, or a destination that is not a
                valid agent id.
        """
        if isinstance(pattern, CompiledRule):
            rule = pattern.naming(self.senders)
        else:
            rule = compile_rule(pattern, self.senders)
        pattern = rule.pattern
        if rule.senders == ():
            raise RoutingError(
                f"route {pattern!r}: no known agent id starts with {rule.value!r}; a sender"
                " prefix matches only known senders (MessageRouter(senders=...); in a"
                " configuration: agents and external_agents)"
            )
        dests = _destinations(pattern, destinations)
        route = self._routes.get(pattern)
        if route is None:
            self._routes[pattern] = _Route(rule, dests)
        else:
            route.destinations = dests

    def add_filter(self, pattern: str, filter_func: Filter) -> None:
        """Only let the route ``pattern`` take messages for which ``filter_func`` is true.

        Raises:
            RoutingError: there is no route with that pattern (add it first).
        """
        self._route(pattern).filter = filter_func

    def add_transform(self, pattern: str, transform_func: Transform) -> None:
        """Have the route ``pattern``'s destinations receive ``transform_func(message)``.

        Raises:
            RoutingError: there is no route with that pattern (add it first).
        """
        self._route(pattern).transform = transform_func

    @property
    def rules(self) -> list[CompiledRule]:
        """The compiled patterns, in route order."""
        return [route.rule for route in self._routes.values()]

    @property
    def destinations(self) -> list[str]:
        """Every agent some route sends to, each once, in route order."""
        return list(
            dict.fromkeys(dest for route in self._routes.values() for dest in route.destinations)
        )

    def bindings(self) -> list[tuple[str, str]]:
        """``(binding_key, destination)`` pairs the broker needs, without repeats.

        A route with a filter has none: the broker cannot run the filter, so the sender
        runs it and addresses the copies itself (:meth:`filtered_destinations`).

        >>> router = MessageRouter()
        >>> router.add_route("type:task", ["researcher", "writer"])
        >>> router.bindings()
        [('task.*.*.-', 'researcher'), ('task.*.*.-', 'writer')]
        """
        pairs = (
            (key, dest)
            for route in self._routes.values()
            if route.filter is None
            for key in route.rule.binding_keys
            for dest in route.destinations
        )
        return list(dict.fromkeys(pairs))

    def filtered_destinations(self, message: Message) -> list[str]:
        """The destinations of the filtered routes that take ``message``.

        No binding delivers to them; the sender adds a ``BCC`` for each
        (``BrokerClient.send`` does), so their inboxes get exactly what the filters keep.
        """
        found = (
            dest
            for route in self._routes.values()
            if route.filter is not None and route.takes(message)
            for dest in route.destinations
        )
        return list(dict.fromkeys(found))

    def send_headers(
        self, message: Message, extra_headers: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """``extra_headers`` for publishing routed ``message`` once: plus a ``BCC`` of
        the routed key per destination of a filtered route that keeps it (a filtered
        route has no binding: the broker cannot run a filter).

        Raises:
            NoRouteError: no route takes ``message`` (an error here, not a message
                nobody reads).
        """
        if not self.get_destinations(message):
            raise NoRouteError(f"no route takes message {message.id} ({wire.routing_key(message)})")
        if filtered := self.filtered_destinations(message):
            copies = (message.model_copy(update={"recipient": d}) for d in filtered)
            bcc = [wire.routing_key(copy) for copy in copies]
            return {**(extra_headers or {}), "BCC": bcc}
        return extra_headers

    def get_destinations(self, message: Message) -> list[str]:
        """The agents that receive ``message`` if it is sent without a recipient.

        In route order, then destination order, each agent once. ``message.recipient``
        is not consulted: a message with a recipient never goes through routes.
        """
        found = (
            dest
            for route in self._routes.values()
            if route.takes(message)
            for dest in route.destinations
        )
        return list(dict.fromkeys(found))

    def explain(self, message: Message) -> list[RouteVerdict]:
        """Every route's decision about ``message``, in route order; for people.

        Unlike :meth:`get_destinations`, a raising filter does not propagate: it is
        reported in its route's verdict (which then does not take the message).
        """
        verdicts = []
        for route in self._routes.values():
            matches = route.rule.matches(message)
            filtered_out, error = False, None
            if matches and route.filter is not None:
                try:
                    filtered_out = not route.filter(message)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
            verdicts.append(
                RouteVerdict(
                    route.rule.pattern,
                    route.rule.binding_keys,
                    tuple(route.destinations),
                    matches,
                    filtered_out,
                    error,
                    route.transform is not None,
                )
            )
        return verdicts

    def accept(self, message: Message, destination: str) -> Message | None:
        """What ``destination`` receives of a routed message delivered into its inbox.

        Bindings deliver what the patterns match, but a filter may refuse it (and an
        inbox keeps the bindings of routes since removed), so this decides: None
        unless a route listing ``destination`` matches and its filter keeps the message.
        Otherwise a copy with ``recipient=destination``, passed through the transforms
        of those routes in route order. ``message`` itself is never changed: a transform
        gets a deep copy to change; without one, the copy shares content and metadata
        (a deep copy of every routed delivery would cost more than decoding it).
        """
        routes = [
            route
            for route in self._routes.values()
            if destination in route.destinations and route.takes(message)
        ]
        if not routes:
            return None
        private = any(route.transform is not None for route in routes)
        accepted = message.model_copy(update={"recipient": destination}, deep=private)
        for route in routes:
            accepted = route.apply(accepted)
        return accepted

    def _route(self, pattern: str) -> _Route:
        route = self._routes.get(pattern)
        if route is None:
            raise RoutingError(f"no route with pattern {pattern!r}; call add_route first")
        return route


def _destinations(pattern: str, destinations: Sequence[str]) -> list[str]:
    """Validated destinations, each once; a bare string would route to its letters."""
    if isinstance(destinations, str):
        raise RoutingError(
            f"route {pattern!r}: destinations must be a list of agent ids, not a string"
        )
    dests = list(dict.fromkeys(destinations))
    if not dests:
        raise RoutingError(f"route {pattern!r} has no destinations")
    for dest in dests:
        _check_agent_id(pattern, dest, "destination")
    return dests


def _check_agent_id(pattern: str, value: str, role: str) -> None:
    if not isinstance(value, str) or not _AGENT_ID.fullmatch(value):
        raise RoutingError(
            f"route {pattern!r}: invalid agent id {value!r} as {role}: must match"
            f" {AGENT_ID_PATTERN}"
        )
