"""The memory transport's shortcuts past aio-pika's slow paths build the same objects
aio-pika builds: a fast IncomingMessage equals aio-pika's own, slot for slot, for
deliveries of every shape (a later aio-pika that adds or changes a field fails here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aio_pika.message import IncomingMessage
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from amqp_agents.memory.transport import incoming_message

FULL = spec.Basic.Properties(
    content_type="application/json",
    content_encoding="utf-8",
    headers={"x-sender": "boss", "n": 3, "nested": {"a": [1, "b"]}},
    delivery_mode=2,
    priority=3,
    correlation_id="c1",
    reply_to="ns.reply.x",
    expiration="1500",
    message_id="m1",
    timestamp=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    message_type="task",
    user_id="guest",
    app_id="app",
)
DELIVER = spec.Basic.Deliver(
    consumer_tag="ctag1", delivery_tag=7, redelivered=True, exchange="ns", routing_key="a.b.c.d"
)
GET_OK = spec.Basic.GetOk(
    delivery_tag=3, redelivered=False, exchange="", routing_key="q", message_count=5
)


def _slots(message: Any) -> dict[str, Any]:
    values = {}
    for cls in type(message).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{cls.__name__.lstrip('_')}{name}"
            if name in ("__weakref__", "__dict__"):
                continue
            values[name] = getattr(message, name, "<unset>")
    return values


@pytest.mark.parametrize("frame", [DELIVER, GET_OK, spec.Basic.Deliver(delivery_tag=0)])
@pytest.mark.parametrize("properties", [FULL, spec.Basic.Properties()])
@pytest.mark.parametrize("no_ack", [False, True])
def test_fast_incoming_message_is_aio_pikas(
    frame: Any, properties: spec.Basic.Properties, no_ack: bool
) -> None:
    delivered = DeliveredMessage(
        delivery=frame,
        header=ContentHeader(properties=properties, body_size=4),
        body=b'{"a"',
        channel=None,  # type: ignore[arg-type]
    )
    reference = IncomingMessage(delivered, no_ack=no_ack)
    fast = incoming_message(delivered, no_ack)
    assert type(fast) is IncomingMessage
    assert _slots(fast) == _slots(reference)
    assert len(_slots(reference)) > 20  # every slot of both classes compared


def test_fast_incoming_message_keeps_the_lock() -> None:
    delivered = DeliveredMessage(
        delivery=DELIVER,
        header=ContentHeader(properties=FULL, body_size=4),
        body=b"body",
        channel=None,  # type: ignore[arg-type]
    )
    fast = incoming_message(delivered, no_ack=True)  # no_ack: locked at once
    assert fast.locked
    with pytest.raises(ValueError, match="locked"):
        fast.body = b"other"
