"""The Message envelope and its helpers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from amqp_agents import (
    InvalidMessageError,
    Message,
    MessagePriority,
    MessageType,
    create_result_message,
    create_task_message,
)
from amqp_agents.message import validate_agent_id


def test_to_dict_from_dict_round_trips_exactly_through_json() -> None:
    m = Message(
        sender="a",
        recipient="b",
        type=MessageType.STATUS,
        priority=MessagePriority.HIGH,
        content=[1, {"x": None}],
        metadata={"k": "v"},
        reply_to="r",
        conversation_id="c",
    )
    assert Message.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_tutorial_values_are_kept() -> None:
    assert [t.value for t in MessageType] == [
        "request",
        "response",
        "notification",
        "task",
        "result",
        "error",
        "status",
    ]
    assert [int(p) for p in MessagePriority] == [1, 2, 3, 4]


def test_defaults() -> None:
    m = Message()
    assert len(m.id) == 36
    assert m.timestamp.tzinfo is not None
    assert m.type is MessageType.NOTIFICATION and m.priority is MessagePriority.NORMAL


def test_naive_timestamp_is_read_as_utc() -> None:
    m = Message(timestamp=datetime(2026, 1, 1, 12, 0))
    assert m.timestamp == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_from_dict_missing_field_is_typed_error() -> None:
    with pytest.raises(InvalidMessageError):
        Message.from_dict({"type": "nope"})


def test_task_and_result_helpers_link_up() -> None:
    task = create_task_message("c", "w", "write", {"topic": "x"}, MessagePriority.HIGH)
    assert task.content == {"description": "write", "context": {"topic": "x"}}
    assert task.conversation_id
    result = create_result_message("w", "c", "done", task)
    assert result.reply_to == task.id
    assert result.conversation_id == task.conversation_id
    assert result.type is MessageType.RESULT


@pytest.mark.parametrize("good", ["a", "writer-2", "A_b-C", "x" * 64])
def test_valid_agent_ids(good: str) -> None:
    assert validate_agent_id(good) == good


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "#", "9lives", "x" * 65, "bob\n"])
def test_invalid_agent_ids(bad: str) -> None:
    with pytest.raises(InvalidMessageError):
        validate_agent_id(bad)


def test_ids_are_distinct_version_4_uuids() -> None:
    ids = {Message().id for _ in range(10_000)}
    assert len(ids) == 10_000
    for text in list(ids)[:100]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


@pytest.mark.parametrize("bad", ["a.b", "a*", "#", "9lives", "x" * 65, "bob\n", "a b"])
@pytest.mark.parametrize("field", ["sender", "recipient"])
def test_envelope_agent_ids_are_checked_like_validate_agent_id(field: str, bad: str) -> None:
    with pytest.raises(ValueError):
        Message(**cast(dict[str, Any], {field: bad}))
    assert getattr(Message(**cast(dict[str, Any], {field: "x" * 64})), field) == "x" * 64
