"""The golden vectors of docs/wire-vectors/ against wire.encode / wire.decode, both ways.

The vectors are the contract as data, for implementers in other languages (the Node
client in tests/foreign reads the same files). One case per vector, so a drift shows
as the one vector that no longer holds. A test below also checks the vectors cover
every row of the property and header tables of docs/wire-format.md.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from amqp_agents import InvalidMessageError, Message, MessagePriority, MessageType, wire

DOCS = Path(__file__).parents[2] / "docs"
VECTORS = DOCS / "wire-vectors"


def load(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((VECTORS / f"{name}.json").read_text())
    return vectors


def cases(*names: str) -> list[Any]:
    return [pytest.param(v, id=f"{name}:{v['name']}") for name in names for v in load(name)]


@dataclass
class Delivery:
    """A delivery as the vector's ``amqp`` side describes it (what a consumer receives)."""

    body: bytes
    headers: dict[str, Any]
    content_type: str | None
    message_id: str | None
    correlation_id: str | None
    type: str | None
    priority: int | None
    timestamp: datetime | None
    routing_key: str | None
    expiration: float | None


def delivery(amqp: dict[str, Any]) -> Delivery:
    props = amqp.get("properties", {})
    body = base64.b64decode(amqp["body_base64"]) if "body_base64" in amqp else amqp["body"].encode()
    timestamp = props.get("timestamp")
    expiration = props.get("expiration")
    return Delivery(
        body=body,
        headers=dict(amqp.get("headers", {})),
        content_type=props.get("content_type"),
        message_id=props.get("message_id"),
        correlation_id=props.get("correlation_id"),
        type=props.get("type"),
        priority=props.get("priority"),
        timestamp=None if timestamp is None else datetime.fromtimestamp(timestamp, UTC),
        routing_key=amqp.get("routing_key"),
        expiration=None if expiration is None else int(expiration) / 1000,
    )


def properties_of(out: wire.Outgoing) -> dict[str, Any]:
    """The AMQP properties of an encoded message, as the vectors spell them."""
    props: dict[str, Any] = {
        "content_type": wire.CONTENT_TYPE,
        "delivery_mode": 2,
        "priority": out.priority,
        "message_id": out.message_id,
        "timestamp": int(out.timestamp.timestamp()),
        "type": out.type,
        "correlation_id": out.correlation_id,
        "reply_to": out.reply_to,
        "expiration": out.expiration,
    }
    return {name: value for name, value in props.items() if value is not None}


@pytest.mark.parametrize("vector", cases("messages"))
def test_encode_gives_the_vectors_amqp_side(vector: dict[str, Any]) -> None:
    options = dict(vector.get("encode_with", {}))
    for name in ("deadline", "now"):
        if name in options:
            options[name] = datetime.fromisoformat(options[name])
    out = wire.encode(Message.from_dict(vector["message"]), **options)
    amqp = vector["amqp"]
    assert out.routing_key == amqp["routing_key"]
    assert properties_of(out) == amqp["properties"]
    assert out.headers == amqp["headers"]
    assert out.body == amqp["body"].encode()


@pytest.mark.parametrize("vector", cases("messages", "defaults"))
def test_decode_gives_the_vectors_message(vector: dict[str, Any]) -> None:
    before = datetime.now(UTC)
    message = wire.decode(delivery(vector["amqp"]), inbox_owner=vector.get("inbox_owner", ""))
    got = message.to_dict()
    generated = vector.get("generated", [])
    if "id" in generated:
        assert uuid.UUID(got.pop("id")).version == 4
    if "timestamp" in generated:
        assert before <= datetime.fromisoformat(got.pop("timestamp")) <= datetime.now(UTC)
    assert got == vector["message"]


@pytest.mark.parametrize("vector", cases("refused"))
def test_decode_refuses_with_the_vectors_reason(vector: dict[str, Any]) -> None:
    with pytest.raises(InvalidMessageError) as refused:
        wire.decode(
            delivery(vector["amqp"]),
            inbox_owner=vector["inbox_owner"],
            max_body_bytes=vector.get("max_body_bytes"),
        )
    assert str(refused.value).startswith(vector["refused"])


def _error(described: dict[str, str] | None) -> Exception | None:
    if described is None:
        return None
    kind: type[Exception] = type(described["type"], (Exception,), {})
    return kind(described["message"])


@pytest.mark.parametrize("vector", cases("dead-letters"))
def test_dead_letter_headers_are_the_vectors(vector: dict[str, Any]) -> None:
    """The dead letter's headers: the original's (less CC and BCC) plus the dead ones.

    Its properties (expiration removed, delivery_mode 2) are set by the publishing
    side; tests/integration/test_wire_contract.py and the Node client check them on
    real dead letters.
    """
    original = delivery(vector["amqp"])
    by = vector["dead_letter_by"]
    if by["reason"].startswith("undecodable: "):
        with pytest.raises(InvalidMessageError) as refused:
            wire.decode(original, inbox_owner=by["agent"])
        assert by["reason"] == f"undecodable: {refused.value}"
    added = wire.dead_letter_headers(
        original,
        reason=by["reason"],
        agent_id=by["agent"],
        error=_error(by.get("error")),
        attempts=by.get("attempts"),
    )
    kept = {k: v for k, v in original.headers.items() if k not in ("CC", "BCC")}
    assert {**kept, **added} == vector["dead"]["headers"]
    assert vector["dead"]["properties"].get("expiration") is None


def test_the_vectors_cover_every_type_and_priority_both_ways() -> None:
    both_ways = [Message.from_dict(v["message"]) for v in load("messages")]
    assert {m.type for m in both_ways} == set(MessageType)
    assert {m.priority for m in both_ways} == set(MessagePriority)


def _table_names(section: str) -> set[str]:
    """The first column's names of the table under ``## {section}`` in wire-format.md."""
    text = (DOCS / "wire-format.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def _vector_names(where: str) -> set[str]:
    names: set[str] = set()
    for file in ("messages", "defaults", "refused"):
        for vector in load(file):
            names |= set(vector["amqp"].get(where, {}))
    for vector in load("dead-letters"):
        names |= set(vector["dead"][where]) | set(vector["amqp"].get(where, {}))
    return names


@pytest.mark.parametrize("section", ["Properties", "Headers", "Dead letters"])
def test_every_row_of_the_docs_tables_is_in_a_vector(section: str) -> None:
    documented = _table_names(section)
    assert documented, f"no table rows found under '## {section}'"
    in_vectors = _vector_names("properties") | _vector_names("headers")
    assert documented - in_vectors == set()
