"""MessageRouter and compile_rule: patterns, bindings, filters, transforms, accept()."""

from __future__ import annotations

import doctest
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amqp_agents import (
    ConfigError,
    Message,
    MessagePriority,
    MessageRouter,
    MessageType,
    RoutingError,
    RoutingMessageQueue,
    routing,
    wire,
)
from amqp_agents.admission import route_view
from amqp_agents.routing import compile_rule

# -- compiling patterns -----------------------------------------------------------------

KNOWN = ["bob", "agent_1", "agent_", "agent", "a", "writer-2", "writer-22", "alice"]
"""The known agent ids a sender prefix expands to."""

COMPILE_TABLE = [
    ("*", ("*.*.*.-",)),
    *[(f"type:{t.value}", (f"{t.value}.*.*.-",)) for t in MessageType],
    *[(f"priority:{p}", (f"*.{p}.*.-",)) for p in range(1, 5)],
    ("sender:bob", ("*.*.bob.-",)),
    ("sender:writer-2", ("*.*.writer-2.-",)),
    ("sender:agent_*", ("*.*.agent_1.-", "*.*.agent_.-")),
    ("sender:a*", ("*.*.agent_1.-", "*.*.agent_.-", "*.*.agent.-", "*.*.a.-", "*.*.alice.-")),
    ("sender:zed*", ()),
]


@pytest.mark.parametrize(("pattern", "keys"), COMPILE_TABLE)
def test_compile_rule_gives_binding_keys(pattern: str, keys: tuple[str, ...]) -> None:
    rule = compile_rule(pattern, KNOWN)
    assert (rule.pattern, rule.binding_keys) == (pattern, keys)


def test_a_prefix_route_that_names_no_known_sender_is_refused() -> None:
    with pytest.raises(RoutingError, match="no known agent id starts with 'zed'"):
        MessageRouter(senders=KNOWN).add_route("sender:zed*", ["auditor"])


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "type",
        "type:",
        "type:job",
        "type:TASK",
        "type:*",
        " type:task",
        "TYPE:task",
        "priority:0",
        "priority:5",
        "priority:04",
        "priority:high",
        "priority:",
        "sender:",
        "sender:*",
        "sender:a.b",
        "sender:*bob",
        "sender:a*b",
        "sender:1abc",
        "sender:-",
        "recipient:bob",
        "**",
        "#",
        "priority:4\n",  # "$" in a regex would let these newlines into binding keys
        "sender:bob\n",
        "sender:agent_\n*",
    ],
)
def test_unknown_or_invalid_patterns_raise_routing_error(pattern: str) -> None:
    with pytest.raises(RoutingError) as info:
        compile_rule(pattern)
    assert repr(pattern) in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_unknown_pattern_error_lists_the_valid_forms() -> None:
    with pytest.raises(RoutingError, match=r"'\*', 'type:<type>', 'priority:<1-4>'"):
        compile_rule("recipient:bob")


@pytest.mark.parametrize(
    ("pattern", "fields", "expected"),
    [
        ("*", {}, True),
        ("type:task", {"type": MessageType.TASK}, True),
        ("type:task", {"type": MessageType.RESULT}, False),
        ("priority:4", {"priority": MessagePriority.URGENT}, True),
        ("priority:4", {"priority": MessagePriority.HIGH}, False),
        ("sender:bob", {"sender": "bob"}, True),
        ("sender:bob", {"sender": "bobby"}, False),
        ("sender:bob", {"sender": ""}, False),
        ("sender:agent_*", {"sender": "agent_1"}, True),
        ("sender:agent_*", {"sender": "agent_7"}, False),  # not a known agent
        ("sender:agent_*", {"sender": "agent_"}, True),
        ("sender:agent_*", {"sender": "agent"}, False),
        ("sender:agent_*", {"sender": "my_agent_7"}, False),
        ("sender:agent_*", {"sender": ""}, False),
    ],
)
def test_rule_predicate(pattern: str, fields: dict[str, Any], expected: bool) -> None:
    assert compile_rule(pattern, KNOWN).matches(Message(**fields)) is expected


def _topic_matches(binding_key: str, routing_key: str) -> bool:
    """RabbitMQ's topic match for keys without ``#``: ``*`` is exactly one word."""
    pattern, words = binding_key.split("."), routing_key.split(".")
    return len(pattern) == len(words) and all(
        p in ("*", w) for p, w in zip(pattern, words, strict=True)
    )


PATTERNS = [pattern for pattern, _ in COMPILE_TABLE]
SENDERS = ["", "bob", "bobby", "agent_1", "agent_7", "agent", "a", "writer-2", "writer-22"]
routed_messages = st.builds(
    Message,
    sender=st.sampled_from(SENDERS),
    type=st.sampled_from(list(MessageType)),
    priority=st.sampled_from(list(MessagePriority)),
)


@settings(database=None, max_examples=300)
@given(pattern=st.sampled_from(PATTERNS), message=routed_messages)
def test_binding_keys_deliver_exactly_what_the_pattern_matches(
    pattern: str, message: Message
) -> None:
    """The pure model of the broker; tests/integration/test_routing.py asks the broker."""
    rule = compile_rule(pattern, KNOWN)
    key = wire.routing_key(message)
    delivered = any(_topic_matches(binding, key) for binding in rule.binding_keys)
    assert delivered == rule.matches(message)


def test_route_keys_never_catch_addressed_messages() -> None:
    addressed = Message(sender="bob", recipient="writer", type=MessageType.TASK)
    for pattern in PATTERNS:
        for binding in compile_rule(pattern, KNOWN).binding_keys:
            assert not _topic_matches(binding, wire.routing_key(addressed))


def test_docstring_examples_hold() -> None:
    assert doctest.testmod(routing).failed == 0


# -- get_destinations -------------------------------------------------------------------


def test_get_destinations_keeps_route_order_and_lists_each_agent_once() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("type:result", ["coordinator", "writer"])
    router.add_route("sender:bob", ["writer", "auditor"])
    router.add_route("*", ["archive", "coordinator"])
    message = Message(sender="bob", type=MessageType.RESULT)
    assert router.get_destinations(message) == ["coordinator", "writer", "auditor", "archive"]
    assert router.get_destinations(Message(sender="alice")) == ["archive", "coordinator"]


def test_get_destinations_is_empty_when_nothing_matches() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("type:task", ["researcher"])
    assert router.get_destinations(Message(type=MessageType.STATUS)) == []


def test_get_destinations_ignores_the_recipient() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("type:task", ["researcher"])
    addressed = Message(recipient="writer", type=MessageType.TASK)
    assert router.get_destinations(addressed) == ["researcher"]


def test_a_failing_filter_removes_only_its_routes_destinations() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("sender:agent_*", ["auditor", "archive"])
    router.add_route("type:status", ["archive", "monitor"])
    router.add_filter("sender:agent_*", lambda m: m.priority >= MessagePriority.HIGH)
    low = Message(sender="agent_1", type=MessageType.STATUS, priority=MessagePriority.LOW)
    high = low.model_copy(update={"priority": MessagePriority.HIGH})
    assert router.get_destinations(low) == ["archive", "monitor"]
    assert router.get_destinations(high) == ["auditor", "archive", "monitor"]


def test_adding_a_route_again_replaces_destinations_and_keeps_hooks() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("type:task", ["researcher"])
    router.add_route("*", ["archive"])
    router.add_filter("type:task", lambda m: m.content != "skip")
    router.add_route("type:task", ["writer"])
    assert router.get_destinations(Message(type=MessageType.TASK)) == ["writer", "archive"]
    assert router.get_destinations(Message(type=MessageType.TASK, content="skip")) == ["archive"]
    assert [rule.pattern for rule in router.rules] == ["type:task", "*"]


def test_hooks_need_an_existing_route() -> None:
    router = MessageRouter(senders=KNOWN)
    with pytest.raises(RoutingError, match="add_route first"):
        router.add_filter("type:task", lambda m: True)
    with pytest.raises(RoutingError, match="add_route first"):
        router.add_transform("type:task", lambda m: m)


@pytest.mark.parametrize(
    ("destinations", "complaint"),
    [
        ("writer", "not a string"),
        ([], "no destinations"),
        (["writer", "a.b"], "invalid agent id 'a.b'"),
        (["*"], "invalid agent id"),
        (["writer\n"], "invalid agent id"),
    ],
)
def test_bad_destinations_raise(destinations: Any, complaint: str) -> None:
    with pytest.raises(RoutingError, match=complaint):
        MessageRouter().add_route("*", destinations)


def test_bad_pattern_in_add_route_raises() -> None:
    with pytest.raises(RoutingError):
        MessageRouter().add_route("type:job", ["writer"])


def test_bindings_pair_keys_with_destinations_once() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("sender:agent_*", ["auditor"])
    router.add_route("*", ["auditor", "archive"])
    router.add_route("priority:4", ["auditor", "auditor"])
    assert router.bindings() == [
        ("*.*.agent_1.-", "auditor"),
        ("*.*.agent_.-", "auditor"),
        ("*.*.*.-", "auditor"),
        ("*.*.*.-", "archive"),
        ("*.4.*.-", "auditor"),
    ]


# -- accept: the consumer's decision ----------------------------------------------------


def _tag(label: str) -> routing.Transform:
    def transform(message: Message) -> Message:
        message.metadata.setdefault("tags", []).append(f"{label}->{message.recipient}")
        return message

    return transform


def test_accept_sets_recipient_and_applies_matching_transforms_in_route_order() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("type:result", ["writer", "coordinator"])
    router.add_route("sender:bob", ["writer"])
    router.add_route("priority:4", ["writer"])
    router.add_transform("type:result", _tag("result"))
    router.add_transform("sender:bob", _tag("bob"))
    router.add_transform("priority:4", _tag("urgent"))
    sent = Message(sender="bob", type=MessageType.RESULT, content={"k": 1})

    writer = router.accept(sent, "writer")
    coordinator = router.accept(sent, "coordinator")

    assert writer is not None and coordinator is not None
    assert writer.recipient == "writer"
    assert writer.metadata == {"tags": ["result->writer", "bob->writer"]}
    assert coordinator.metadata == {"tags": ["result->coordinator"]}
    assert writer.model_copy(update={"recipient": "", "metadata": {}}) == sent
    assert sent.recipient == "" and sent.metadata == {}, "the original must not change"


def test_accept_refuses_what_no_route_for_the_destination_takes() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("sender:agent_*", ["auditor"])
    router.add_route("*", ["archive"])
    assert router.accept(Message(sender="bobby"), "auditor") is None  # prefix binding overshoots
    assert router.accept(Message(sender="agent_1"), "nobody") is None
    accepted = router.accept(Message(sender="agent_1"), "auditor")
    assert accepted is not None and accepted.recipient == "auditor"


def test_accept_skips_the_transform_of_a_route_whose_filter_fails() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("sender:agent_*", ["auditor"])
    router.add_route("priority:4", ["auditor"])
    router.add_filter("sender:agent_*", lambda m: not m.metadata.get("draft"))
    router.add_transform("sender:agent_*", lambda m: m.model_copy(update={"content": "[x]"}))
    draft = Message(sender="agent_1", content="raw", metadata={"draft": True})

    assert router.accept(draft, "auditor") is None
    urgent = router.accept(draft.model_copy(update={"priority": MessagePriority.URGENT}), "auditor")
    assert urgent is not None and urgent.content == "raw"


def test_transform_returning_something_else_raises() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("*", ["a"])
    router.add_transform("*", lambda m: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(RoutingError, match="returned NoneType, not a Message"):
        router.accept(Message(), "a")


def test_a_raising_hook_is_named_in_the_error() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("type:task", ["a"])
    router.add_filter("type:task", lambda m: 1 / 0 > 0)
    with pytest.raises(ZeroDivisionError) as info:
        router.get_destinations(Message(type=MessageType.TASK))
    assert "in the filter of route 'type:task'" in (info.value.__notes__ or [""])[0]


@dataclass
class _Hooks:
    """A random router: each route may have a filter on priority and a transform."""

    router: MessageRouter = field(default_factory=lambda: MessageRouter(senders=KNOWN))
    destinations: set[str] = field(default_factory=set)


@st.composite
def routers(draw: st.DrawFn) -> _Hooks:
    hooks = _Hooks()
    agents = ["a", "b", "c"]
    usable = [pattern for pattern, keys in COMPILE_TABLE if keys]
    for pattern in draw(st.lists(st.sampled_from(usable), max_size=5, unique=True)):
        dests = draw(st.lists(st.sampled_from(agents), min_size=1, max_size=3))
        hooks.router.add_route(pattern, dests)
        hooks.destinations.update(dests)
        if draw(st.booleans()):
            hooks.router.add_filter(
                pattern, _at_least(draw(st.sampled_from(list(MessagePriority))))
            )
    return hooks


def _at_least(floor: MessagePriority) -> routing.Filter:
    return lambda message: message.priority >= floor


@settings(database=None, max_examples=300)
@given(hooks=routers(), message=routed_messages)
def test_accept_agrees_with_get_destinations(hooks: _Hooks, message: Message) -> None:
    """What the sender predicts is exactly what the consumers accept."""
    predicted = hooks.router.get_destinations(message)
    accepted = [d for d in ["a", "b", "c"] if hooks.router.accept(message, d) is not None]
    assert sorted(predicted) == accepted
    assert set(predicted) <= hooks.destinations


# -- the IO glue's pure parts ----------------------------------------------------------


@dataclass
class _Delivery:
    body: bytes = b'"x"'
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = "application/json"
    message_id: str | None = None
    correlation_id: str | None = None
    type: str | None = None
    priority: int | None = None
    timestamp: Any = None
    routing_key: str | None = None


@pytest.mark.parametrize(
    ("headers", "key", "recipient"),
    [
        ({"x-recipient": ""}, "task.2.bob.-", ""),  # routed, ours
        ({}, "task.2.bob.-", ""),  # routed, a foreign client
        ({"x-recipient": ""}, "ns.inbox.auditor", ""),  # routed, back from a retry queue
        ({"x-recipient": "writer"}, "task.2.bob.writer", "writer"),
        ({}, "task.2.bob.writer", "writer"),
        ({}, "ns.inbox.auditor", "auditor"),  # pushed straight into the inbox
    ],
)
def test_routed_deliveries_decode_without_recipient(
    headers: dict[str, Any], key: str, recipient: str
) -> None:
    """The consumer can only apply routes if a routed delivery still looks routed."""
    delivery = _Delivery(headers=headers, routing_key=key)
    assert wire.decode(delivery, inbox_owner="auditor").recipient == recipient


def test_routing_queue_accepts_addressed_messages_unchanged() -> None:
    router = MessageRouter(senders=KNOWN)
    router.add_route("sender:agent_*", ["auditor"])
    router.add_transform("sender:agent_*", lambda m: m.model_copy(update={"content": "[x]"}))
    queue = RoutingMessageQueue(router, "amqp://guest:secret@localhost/", namespace="t")

    addressed = Message(sender="bobby", recipient="auditor", content="raw")
    routed = Message(sender="agent_1", content="raw")
    assert queue.router is router
    assert route_view(router, addressed, "auditor") is addressed
    assert route_view(router, routed.model_copy(update={"sender": "bobby"}), "auditor") is None
    accepted = route_view(router, routed, "auditor")
    assert accepted is not None and accepted.content == "[x]"
    assert "secret" not in repr(queue)


def test_a_filtered_route_is_not_bound_and_its_destinations_are_named_per_message() -> None:
    """The broker cannot run a filter: the sender addresses those copies (BCC)."""
    router = MessageRouter(senders=KNOWN)
    router.add_route("type:task", ["researcher"])
    router.add_route("*", ["archive", "auditor"])
    router.add_filter("*", lambda m: m.priority >= MessagePriority.HIGH)
    assert router.bindings() == [("task.*.*.-", "researcher")]
    assert router.destinations == ["researcher", "archive", "auditor"]
    urgent = Message(sender="bob", type=MessageType.TASK, priority=MessagePriority.URGENT)
    assert router.filtered_destinations(urgent) == ["archive", "auditor"]
    assert router.filtered_destinations(Message(sender="bob", type=MessageType.TASK)) == []


def test_a_compiled_prefix_rule_is_completed_with_the_routers_known_senders() -> None:
    # A configuration compiles each pattern once, before it knows its agents.
    rule = compile_rule("sender:agent_*")
    assert rule.binding_keys == () and rule.senders == ()
    router = MessageRouter(senders=["agent_1", "bob", "agent_2"])
    router.add_route(rule, ["auditor"])
    assert router.bindings() == [("*.*.agent_1.-", "auditor"), ("*.*.agent_2.-", "auditor")]
    assert router.get_destinations(Message(sender="agent_2", type=MessageType.TASK)) == ["auditor"]
    assert router.get_destinations(Message(sender="agent_3", type=MessageType.TASK)) == []
