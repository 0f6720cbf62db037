"""The pure Message <-> AMQP mapping, including odd and hostile inputs."""

from __future__ import annotations

import doctest
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amqp_agents import (
    InvalidMessageError,
    Message,
    MessagePriority,
    MessageTooLargeError,
    MessageType,
    wire,
)
from amqp_agents.wire import codec as wire_codec
from amqp_agents.wire import headers as wire_headers
from amqp_agents.wire import names as wire_names


@dataclass
class FakeIncoming:
    """What an AMQP delivery carries; built by hand to play any client."""

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = "application/json"
    message_id: str | None = None
    correlation_id: str | None = None
    type: str | None = None
    priority: int | None = None
    timestamp: datetime | None = None
    routing_key: str | None = None


def as_incoming(out: wire.Outgoing) -> FakeIncoming:
    return FakeIncoming(
        body=out.body,
        headers=dict(out.headers),
        message_id=out.message_id,
        correlation_id=out.correlation_id,
        type=out.type,
        priority=out.priority,
        timestamp=out.timestamp.replace(microsecond=0),
        routing_key=out.routing_key,
    )


def full_message() -> Message:
    return Message(
        sender="alice",
        recipient="bob",
        type=MessageType.TASK,
        priority=MessagePriority.URGENT,
        content={"description": "d", "context": {"k": [1, "ü"]}},
        metadata={"trace": "t", "n": {"deep": True}},
        timestamp=datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        reply_to="r1",
        conversation_id="c1",
    )


def test_encode_decode_round_trip_keeps_every_field() -> None:
    message = full_message()
    assert wire.decode(as_incoming(wire.encode(message))) == message


def test_timestamp_round_trips_to_the_microsecond() -> None:
    message = full_message()
    out = wire.encode(message)
    assert wire.decode(as_incoming(out)).timestamp.microsecond == 123456


@pytest.mark.parametrize(
    ("sender", "recipient", "key"),
    [("a", "b", "task.4.a.b"), ("", "b", "task.4.-.b"), ("a", "", "task.4.a.-")],
)
def test_routing_key_layout(sender: str, recipient: str, key: str) -> None:
    message = full_message().model_copy(update={"sender": sender, "recipient": recipient})
    assert wire.routing_key(message) == key


def test_properties_follow_the_contract() -> None:
    message = full_message()
    out = wire.encode(message, reply_to="replies-q")
    assert out.message_id == message.id
    assert out.correlation_id == "r1"
    assert out.reply_to == "replies-q"
    assert out.type == "task"
    assert out.priority == 4
    assert json.loads(out.body) == {"description": "d", "context": {"k": [1, "ü"]}}
    assert out.headers["x-sender"] == "alice"
    assert out.headers["x-recipient"] == "bob"
    assert out.headers["x-conversation-id"] == "c1"
    assert json.loads(out.headers["x-metadata"]) == {"trace": "t", "n": {"deep": True}}
    assert all(not isinstance(v, dict | list) for v in out.headers.values())


def test_empty_metadata_is_omitted() -> None:
    out = wire.encode(Message(sender="a", recipient="b"))
    assert "x-metadata" not in out.headers
    assert "x-conversation-id" not in out.headers


def test_foreign_message_with_only_a_body_gets_defaults() -> None:
    got = wire.decode(FakeIncoming(body=b'"hi"', content_type=None), inbox_owner="bob")
    assert got.content == "hi"
    assert got.sender == ""
    assert got.recipient == "bob"
    assert got.type is MessageType.NOTIFICATION
    assert got.priority is MessagePriority.NORMAL
    assert got.id
    assert abs(got.timestamp - datetime.now(UTC)) < timedelta(seconds=5)


def test_sender_and_type_fall_back_to_the_routing_key() -> None:
    got = wire.decode(FakeIncoming(body=b"1", routing_key="request.3.svc.bob"))
    assert (got.sender, got.recipient, got.type) == ("svc", "bob", MessageType.REQUEST)


@pytest.mark.parametrize(
    ("amqp", "ours"), [(None, 2), (0, 2), (1, 1), (2, 2), (3, 3), (4, 4), (9, 4), (255, 4)]
)
def test_foreign_priorities_are_clamped_and_none_is_normal(amqp: int | None, ours: int) -> None:
    """Issue 18: no priority (aio-pika reads it as 0) is NORMAL, as the doc says, not LOW."""
    got = wire.decode(FakeIncoming(body=b"1", priority=amqp))
    assert int(got.priority) == ours


def test_amqp_timestamp_used_when_header_missing() -> None:
    ts = datetime(2025, 1, 1, tzinfo=UTC)
    assert wire.decode(FakeIncoming(body=b"1", timestamp=ts)).timestamp == ts


@pytest.mark.parametrize(
    ("incoming", "complaint"),
    [
        (FakeIncoming(body=b"not json"), "not JSON"),
        (FakeIncoming(body=b"\xff\xfe"), "not UTF-8"),
        (FakeIncoming(body=b"1", content_type="application/python-pickle"), "content type"),
        (FakeIncoming(body=b"1", content_type="text/plain"), "content type"),
        (FakeIncoming(body=b"1", type="gossip"), "unknown message type"),
        (FakeIncoming(body=b"1", headers={"x-metadata": "[1]"}), "JSON object"),
        (FakeIncoming(body=b"1", headers={"x-metadata": "{"}), "x-metadata"),
        (FakeIncoming(body=b"1", headers={"x-sender": "a.b"}), "invalid envelope"),
        (FakeIncoming(body=b"[" * 100_000 + b"]" * 100_000), "not JSON"),
    ],
)
def test_odd_inputs_raise_invalid_message(incoming: FakeIncoming, complaint: str) -> None:
    with pytest.raises(InvalidMessageError, match=complaint):
        wire.decode(incoming)


def test_content_type_with_charset_is_accepted() -> None:
    got = wire.decode(FakeIncoming(body=b"1", content_type="application/json; charset=utf-8"))
    assert got.content == 1


def test_metadata_header_as_bytes_is_read() -> None:
    got = wire.decode(FakeIncoming(body=b"1", headers={"x-metadata": b'{"a": 1}'}))
    assert got.metadata == {"a": 1}


def test_huge_metadata_is_refused_before_publishing() -> None:
    message = Message(sender="a", recipient="b", metadata={"blob": "x" * 100_000})
    with pytest.raises(MessageTooLargeError, match="metadata"):
        wire.encode(message)


def test_oversized_body_is_refused() -> None:
    message = Message(sender="a", recipient="b", content="x" * 2000)
    with pytest.raises(MessageTooLargeError, match="limit 1000"):
        wire.encode(message, max_body_bytes=1000)


def test_non_json_content_is_refused() -> None:
    with pytest.raises(InvalidMessageError, match="not JSON"):
        wire.encode(Message(sender="a", recipient="b", content={1, 2}))


def test_deadline_sets_header_and_expiration() -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    out = wire.encode(Message(sender="a", recipient="b"), deadline=deadline)
    assert out.expiration_s is not None and 29 < out.expiration_s <= 30
    assert wire.deadline_of(out.headers) == deadline


@pytest.mark.parametrize("bad", ["a.b", "*", "#", "1abc", "a" * 65, "a b"])
def test_envelope_with_invalid_agent_id_is_rejected(bad: str) -> None:
    with pytest.raises(InvalidMessageError):
        Message.from_dict({**full_message().to_dict(), "sender": bad})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(codec="utf-8")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_body_parses_as_the_standard_library_does(value: Any) -> None:
    body = json.dumps(value).encode()
    got = wire.decode(FakeIncoming(body=body)).content
    # NaN != NaN: compare through the standard library's own encoding.
    assert json.dumps(got) == json.dumps(json.loads(body))


@pytest.mark.parametrize(
    "body",
    [
        b"NaN",
        b"[Infinity, -Infinity]",
        b"1" + b"0" * 400,
        b"1e400",
        b'"\\ud800"',
        b"[" * 300 + b"]" * 300,
    ],
)
def test_unusual_but_valid_json_is_read_as_the_standard_library_does(body: bytes) -> None:
    got = wire.decode(FakeIncoming(body=body)).content
    assert json.dumps(got) == json.dumps(json.loads(body))


@pytest.mark.parametrize("module", [wire_names, wire_headers, wire_codec], ids=lambda m: m.__name__)
def test_the_examples_in_the_wire_docstrings_hold(module: ModuleType) -> None:
    assert doctest.testmod(module).failed == 0
