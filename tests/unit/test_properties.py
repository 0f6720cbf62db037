"""FastProperties marshals exactly the bytes pamqp's Basic.Properties does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aio_pika import DeliveryMode
from hypothesis import given
from hypothesis import strategies as st
from pamqp.commands import Basic

from amqp_agents._properties import FastProperties

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
