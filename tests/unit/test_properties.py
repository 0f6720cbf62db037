"""FastProperties marshals exactly the bytes pamqp's Basic.Properties does, and
unmarshal_fast reads exactly the values pamqp reads (or leaves the frame to pamqp)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aio_pika import DeliveryMode
from hypothesis import given
from hypothesis import strategies as st
from pamqp.base import BasicProperties
from pamqp.commands import Basic

from amqp_agents import Message, MessageType, wire
from amqp_agents._properties import FastProperties, unmarshal_fast
from amqp_agents.publish import properties as publish_properties

FIELDS = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "message_type",
    "user_id",
    "app_id",
)

short_text = st.text(max_size=40) | st.just("") | st.text(min_size=90, max_size=90)
header_value = (
    st.text(max_size=60)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.booleans()
    | st.floats(allow_nan=False, width=32)
    | st.none()
    | st.lists(st.integers(min_value=-5, max_value=5), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.integers(min_value=0, max_value=9), max_size=2)
)
properties = st.fixed_dictionaries(
    {},
    optional={
        "content_type": short_text,
        "content_encoding": short_text,
        "headers": st.dictionaries(st.text(min_size=1, max_size=20), header_value, max_size=6),
        "delivery_mode": st.sampled_from([1, 2]),
        "priority": st.integers(min_value=0, max_value=255),
        "correlation_id": short_text,
        "reply_to": short_text,
        "expiration": short_text,
        "message_id": short_text,
        # naive or aware: hypothesis's typed overloads take one kind per strategy
        "timestamp": st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1))
        | st.datetimes(
            min_value=datetime(1971, 1, 1),
            max_value=datetime(2200, 1, 1),
            timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]),
        ),
        "message_type": short_text,
        "user_id": short_text,
        "app_id": short_text,
    },
)


def both(kwargs: dict[str, Any]) -> tuple[bytes, bytes]:
    return FastProperties(**kwargs).marshal(), Basic.Properties(**kwargs).marshal()


@given(properties)
def test_same_bytes_as_pamqp(kwargs: dict[str, Any]) -> None:
    fast, reference = both(kwargs)
    assert fast == reference


def test_our_message_properties() -> None:
    kwargs: dict[str, Any] = {
        "content_type": "application/json",
        "headers": {
            "x-sender": "alice",
            "x-recipient": "",
            "x-timestamp-us": 1_764_000_000_123_456,
            "x-attempt": 2,
            "BCC": ["agents.history"],
        },
        "delivery_mode": DeliveryMode.PERSISTENT,
        "priority": 4,
        "correlation_id": "c1",
        "reply_to": "agents.reply.x",
        "expiration": "30000",
        "message_id": "7d0c",
        "timestamp": datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC),
        "message_type": "task",
    }
    fast, reference = both(kwargs)
    assert fast == reference
    # ... and without falling back to pamqp (that would be correct, only slow).
    assert FastProperties(**kwargs)._marshal_fast() == reference


@pytest.mark.parametrize(
    "kwargs",
    [
        {"message_id": "x" * 256},
        {"headers": {"k" * 129: 1}},
        {"headers": {"n": 2**64}},
        {"priority": "high"},
    ],
)
def test_what_pamqp_refuses_is_refused_alike(kwargs: dict[str, Any]) -> None:
    try:
        reference: bytes | type[Exception] = Basic.Properties(**kwargs).marshal()
    except Exception as exc:
        reference = type(exc)
    try:
        fast: bytes | type[Exception] = FastProperties(**kwargs).marshal()
    except Exception as exc:
        fast = type(exc)
    assert fast == reference


# --- reading: unmarshal_fast gives what pamqp gives, or leaves the frame to it ----------
SLOTS = Basic.Properties.__slots__


def read_both(flags: int, data: bytes) -> tuple[bool, dict[str, Any], dict[str, Any] | type]:
    """(fast path taken, its values, pamqp's values or the exception type it raised)."""
    fast = Basic.Properties()
    taken = unmarshal_fast(fast, flags, data)
    reference = Basic.Properties()
    try:
        # pamqp's own unmarshal (the class attribute may be the frame guard's wrapper).
        BasicProperties.unmarshal(reference, flags, data)
    except Exception as exc:
        return taken, vars_of(fast), type(exc)
    return taken, vars_of(fast), vars_of(reference)


def vars_of(properties: Basic.Properties) -> dict[str, Any]:
    return {name: getattr(properties, name) for name in SLOTS}


def split(marshalled: bytes) -> tuple[int, bytes]:
    return int.from_bytes(marshalled[:2], "big"), marshalled[2:]


@given(properties)
def test_reads_what_pamqp_reads(kwargs: dict[str, Any]) -> None:
    taken, fast, reference = read_both(*split(Basic.Properties(**kwargs).marshal()))
    if taken:
        assert fast == reference
    else:  # left to pamqp: it set nothing
        assert fast == vars_of(Basic.Properties())


@given(st.integers(min_value=0, max_value=0xFFFF), st.binary(max_size=120))
def test_any_bytes_are_read_as_pamqp_reads_them_or_left_to_it(flags: int, data: bytes) -> None:
    taken, fast, reference = read_both(flags, data)
    if taken:
        assert fast == reference
    else:
        assert fast == vars_of(Basic.Properties())


@pytest.mark.parametrize("reply", [False, True])
def test_our_messages_take_the_fast_path(reply: bool) -> None:
    message = Message(sender="alice", recipient="bob", type=MessageType.TASK, content={"a": 1})
    out = (
        wire.encode(message)
        if reply
        else wire.encode(
            message, reply_to="ns.reply.alice.x", deadline=datetime.now(UTC) + timedelta(seconds=9)
        )
    )
    taken, fast, reference = read_both(*split(publish_properties(out, "guest").marshal()))
    assert taken
    assert fast == reference
    assert fast["headers"]["x-sender"] == "alice"
