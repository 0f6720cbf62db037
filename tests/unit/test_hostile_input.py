"""Hostile input, without a broker: decoding is total, and so is the frame decoder under it.

``wire.decode`` must return a Message or raise InvalidMessageError for anything a
foreign client can put in a delivery, and pamqp (with amqp_agents' frame guard
installed) must decode every content header RabbitMQ relays. The broker-level storm
is tests/reliability/test_security.py.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import pamqp.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import encode
from pamqp.header import ContentHeader

from amqp_agents import InvalidMessageError, Message, MessageTooLargeError, _frame_guard, wire
from amqp_agents._frame_guard import MAX_NESTING

from .test_wire import FakeIncoming

_frame_guard.install()  # as connection.connect does before its first connection

# -- wire.decode ---------------------------------------------------------------------------

HEADER_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text()
    | st.binary()
    | st.binary().map(bytearray)
    | st.datetimes(timezones=st.just(UTC))
    | st.decimals(allow_nan=True),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
"""Anything pamqp can hand over as a header value, and more."""

HEADER_NAMES = st.sampled_from(
    [
        wire.H_SENDER,
        wire.H_RECIPIENT,
        wire.H_CONVERSATION,
        wire.H_METADATA,
        wire.H_TIMESTAMP_US,
        wire.H_DEADLINE_US,
        wire.H_ATTEMPT,
        "x-other",
    ]
)


@st.composite
def deliveries(draw: st.DrawFn) -> FakeIncoming:
    return FakeIncoming(
        body=draw(st.binary(max_size=200) | st.text(max_size=50).map(str.encode)),
        headers=draw(st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4)),
        content_type=draw(st.none() | st.just("application/json") | st.text(max_size=30)),
        message_id=draw(st.none() | st.text(max_size=300)),
        correlation_id=draw(st.none() | st.text(max_size=300)),
        type=draw(st.none() | st.sampled_from(["task", "result"]) | st.text(max_size=10)),
        priority=draw(st.none() | st.integers(0, 255)),
        timestamp=draw(st.none() | st.datetimes(timezones=st.just(UTC))),
        routing_key=draw(st.none() | st.text(max_size=40) | st.just("task.2.a.b")),
    )


@settings(max_examples=200)
@given(deliveries(), st.none() | st.integers(0, 300))
def test_decode_returns_a_message_or_raises_invalid_message_error(
    incoming: FakeIncoming, max_body_bytes: int | None
) -> None:
    try:
        message = wire.decode(incoming, inbox_owner="bob", max_body_bytes=max_body_bytes)
    except InvalidMessageError:
        return
    assert isinstance(message, Message)
    if max_body_bytes is not None:
        assert len(incoming.body) <= max_body_bytes


NOT_TEXT: st.SearchStrategy[Any] = (
    st.integers()
    | st.booleans()
    | st.floats()
    | st.datetimes(timezones=st.just(UTC))
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
    | st.lists(st.integers(), max_size=2)
    | st.binary().map(lambda b: b"\xff" + b)
    | st.binary().map(lambda b: bytearray(b"\xfe" + b))
)


@given(
    st.sampled_from([wire.H_SENDER, wire.H_RECIPIENT, wire.H_CONVERSATION, wire.H_METADATA]),
    NOT_TEXT,
)
def test_a_text_header_that_is_not_text_is_refused_not_converted(name: str, value: Any) -> None:
    with pytest.raises(InvalidMessageError, match=name):
        wire.decode(FakeIncoming(body=b"{}", headers={name: value}), inbox_owner="bob")


def test_bytes_that_are_utf8_still_count_as_text() -> None:
    got = wire.decode(FakeIncoming(body=b"1", headers={"x-sender": bytearray(b"alice")}))
    assert got.sender == "alice"


@pytest.mark.parametrize("depth", [1_500, 100_000])
def test_deep_nesting_is_refused_in_body_and_metadata(depth: int) -> None:
    deep = b"[" * depth + b"]" * depth
    with pytest.raises(InvalidMessageError, match="not JSON"):
        wire.decode(FakeIncoming(body=deep))
    with pytest.raises(InvalidMessageError, match="not JSON"):
        wire.decode(FakeIncoming(body=b"{}", headers={wire.H_METADATA: deep.decode()}))


def test_a_body_over_the_limit_is_refused_unparsed() -> None:
    with pytest.raises(MessageTooLargeError):
        wire.decode(FakeIncoming(body=b'"' + b"x" * 100 + b'"'), max_body_bytes=100)


@pytest.mark.parametrize("us", [2**63 - 1, -(2**63)])
def test_timestamps_and_deadlines_out_of_range_are_clamped(us: int) -> None:
    got = wire.decode(FakeIncoming(body=b"1", headers={wire.H_TIMESTAMP_US: us}))
    assert got.timestamp.year in (1, 9999)
    deadline = wire.deadline_of({wire.H_DEADLINE_US: us})
    assert deadline is not None and deadline.year in (1, 9999)


def test_a_negative_attempt_count_buys_no_extra_retries() -> None:
    assert wire.attempt_of({wire.H_ATTEMPT: -1_000_000}) == 0


@pytest.mark.parametrize(
    ("key", "recipient", "addressed"),
    [
        ("task.2.alice.bob", "bob", True),
        ("task.2.alice.bob", "", True),
        ("task.2.alice.-", "", True),
        ("ns.inbox.bob", "bob", True),
        ("task.2.alice.carol", "carol", False),  # a CC copy
        ("task.2.alice.carol", "bob", False),  # a CC copy claiming to be for bob
        ("task.2.alice.bob", "carol", False),
        ("ns.retry.bob.200ms", "bob", False),
        ("alerts.disk", "", False),
        (None, "bob", False),
    ],
)
def test_addressed_to(key: str | None, recipient: str, addressed: bool) -> None:
    assert wire.addressed_to(key, recipient, "ns", "bob") is addressed


@pytest.mark.parametrize(
    ("queue", "allowed"),
    [
        ("ns.reply.bob.0123abcd", True),
        ("ns.reply.0123abcd", True),
        ("amq.gen-JzTY20BRgKO", True),
        ("amq.rabbitmq.reply-to.g1h2AA", True),
        ("ns.inbox.carol", False),
        ("ns.dead", False),
        ("ns.history", False),
        ("ns.retry.carol.200ms", False),
        ("other.inbox.carol", False),
    ],
)
def test_may_reply_to(queue: str, allowed: bool) -> None:
    assert wire.may_reply_to("ns", queue) is allowed


@pytest.mark.parametrize(
    ("queue", "ours"),
    [
        ("ns.reply.bob.0123abcd", True),
        ("ns.reply.0123abcd", True),
        ("ns.replies", False),  # the exchange's name is no reply queue
        ("amq.gen-JzTY20BRgKO", False),
        ("amq.rabbitmq.reply-to.g1h2AA", False),
        ("other.reply.bob.0123abcd", False),
    ],
)
def test_only_our_reply_queues_are_answered_through_the_replies_exchange(
    queue: str, ours: bool
) -> None:
    assert wire.is_reply_queue("ns", queue) is ours
    # The history binding on ns.replies covers every name answered there.
    pattern = wire.history_reply_binding_key("ns").removesuffix("#")
    assert queue.startswith(pattern) is ours
    assert wire.reply_exchange_name("ns") == "ns.replies"


def test_each_agent_has_its_own_retry_exchange() -> None:
    # An exchange per agent: a permission on it is checked for every key, CC and BCC
    # included (RabbitMQ 3.x checks topic permissions only on the routing key).
    assert wire.retry_exchange_name("ns", "carol") == "ns.retry.carol"
    assert wire.retry_queue_name("ns", "carol", 0.2) == "ns.retry.carol.200ms"


@pytest.mark.parametrize(
    "message",
    [
        Message(id="é" * 200),
        Message(reply_to="r" * 256),
        Message(conversation_id="c" * 200_000),
    ],
)
def test_ids_over_255_bytes_are_refused_before_publishing(message: Message) -> None:
    with pytest.raises(MessageTooLargeError):
        wire.encode(message)


# -- the frame guard ---------------------------------------------------------------------


def _shortstr(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def _table(entries: list[tuple[bytes, bytes]]) -> bytes:
    data = b"".join(_shortstr(name) + value for name, value in entries)
    return struct.pack(">I", len(data)) + data


def _longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


SHORT_BYTES = st.binary(max_size=40)
"""Short strings as RabbitMQ relays them: any bytes, UTF-8 or not."""

FIELD_VALUES: st.SearchStrategy[bytes] = st.recursive(
    st.one_of(
        st.integers(-128, 127).map(lambda v: b"b" + struct.pack(">b", v)),
        st.integers(0, 2**64 - 1).map(lambda v: b"T" + struct.pack(">Q", v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: b"l" + struct.pack(">q", v)),
        st.binary(max_size=20).map(lambda v: b"S" + _longstr(v)),
        st.binary(max_size=20).map(lambda v: b"x" + _longstr(v)),
        st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1)).map(
            lambda v: b"D" + struct.pack(">BI", *v)
        ),
        st.floats(width=64).map(lambda v: b"d" + struct.pack(">d", v)),
        st.just(b"V"),
        st.booleans().map(lambda v: b"t" + bytes([v])),
    ),
    lambda inner: st.one_of(
        st.lists(st.tuples(SHORT_BYTES, inner), max_size=3).map(lambda e: b"F" + _table(e)),
        st.lists(inner, max_size=3).map(lambda v: b"A" + _longstr(b"".join(v))),
    ),
    max_leaves=8,
)


def _nested(depth: int) -> bytes:
    value = b"V"
    for _ in range(depth):
        value = b"F" + _table([(b"k", value)])
    return value


@st.composite
def content_headers(draw: st.DrawFn) -> bytes:
    """A content header frame's payload with properties RabbitMQ would relay."""
    flags, parts = 0, []
    for flag in (0x8000, 0x4000):  # content_type, content_encoding
        if draw(st.booleans()):
            flags |= flag
            parts.append(_shortstr(draw(SHORT_BYTES)))
    if draw(st.booleans()):
        flags |= 0x2000
        entries = draw(st.lists(st.tuples(SHORT_BYTES, FIELD_VALUES), max_size=4))
        if draw(st.booleans()):
            entries.append((b"deep", _nested(draw(st.integers(1, 5_000)))))
        parts.append(_table(entries))
    for flag in (0x0400, 0x0200, 0x0080):  # correlation_id, reply_to, message_id
        if draw(st.booleans()):
            flags |= flag
            parts.append(_shortstr(draw(SHORT_BYTES)))
    if draw(st.booleans()):
        flags |= 0x0040
        parts.append(struct.pack(">Q", draw(st.integers(0, 2**64 - 1))))
    if draw(st.booleans()):
        flags |= 0x0020
        parts.append(_shortstr(draw(SHORT_BYTES)))
    properties = struct.pack(">H", flags) + b"".join(parts)
    return struct.pack(">HHQ", 60, 0, 2) + properties


@settings(max_examples=300)
@given(content_headers())
def test_every_content_header_rabbitmq_relays_decodes(payload: bytes) -> None:
    frame = b"\x02" + struct.pack(">HI", 1, len(payload)) + payload + b"\xce"
    _, _, header = pamqp.frame.unmarshal(frame)
    assert isinstance(header, ContentHeader)


@given(
    st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=5,
    )
)
def test_the_guard_changes_nothing_pamqp_could_decode(headers: dict[str, Any]) -> None:
    _, decoded = pamqp.decode.by_type(encode.field_table(headers), "table")
    assert decoded == headers


def test_what_the_guard_does_to_what_pamqp_could_not_decode() -> None:
    too_late = struct.pack(">Q", 2**64 - 1)
    entries = [(b"x-\xff", b"V"), (b"when", b"T" + too_late), (b"deep", _nested(100))]
    _, decoded = pamqp.decode.by_type(_table(entries), "table")
    assert isinstance(decoded, dict)
    assert decoded["x-\ufffd"] is None
    assert decoded["when"] == datetime.max.replace(tzinfo=UTC)
    depth, level = 2, decoded["deep"]  # the headers table itself is depth 1
    while isinstance(level, dict) and isinstance(level["k"], dict):
        depth, level = depth + 1, level["k"]
    assert (depth, level) == (MAX_NESTING, {"k": None})
    assert pamqp.decode.by_type(_shortstr(b"id\xff"), "shortstr") == (4, "id\ufffd")
