"""The publishing error table: each broker failure becomes the one typed error a caller
catches, and a cancellation of the caller stays a cancellation."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from amqp_agents import (
    BrokerConnectionError,
    InboxFullError,
    InboxUnavailableError,
    MessageTooLargeError,
    NoRouteError,
    PublishTimeoutError,
    UnknownRecipientError,
)
from amqp_agents import DeliveryError as AgentsDeliveryError
from amqp_agents.errors import map_exceptions
from amqp_agents.publish import PublishAttempt, publish_errors


def attempt(
    recipient: str | None = "bob", failure: BrokerConnectionError | None = None
) -> PublishAttempt:
    return PublishAttempt("m1", "ns", "task.2.alice.bob", recipient, 5.0, lambda: failure)


RETURNED = PublishError(
    DeliveredMessage(Basic.Return(312, "NO_ROUTE"), ContentHeader(), b"", cast(Any, None)),
    Basic.Return(312, "NO_ROUTE"),
)

CASES = [
    ("returned, addressed", RETURNED, "bob", UnknownRecipientError),
    ("returned, routed", RETURNED, "", NoRouteError),
    ("returned, a copy", RETURNED, None, AgentsDeliveryError),
    ("nacked: inbox full", DeliveryError(None, Basic.Nack()), "bob", InboxFullError),
    ("confirm timeout", TimeoutError(), "bob", PublishTimeoutError),
    (
        "too large",
        ChannelPreconditionFailed("message size 9 > max size 8"),
        "bob",
        MessageTooLargeError,
    ),
    ("other precondition", ChannelPreconditionFailed("unknown"), "bob", BrokerConnectionError),
    ("no write permission", ChannelAccessRefused("ACCESS_REFUSED"), "bob", AgentsDeliveryError),
    ("closed channel", ChannelInvalidStateError("closed"), "bob", BrokerConnectionError),
    ("socket gone", ConnectionResetError(), "bob", BrokerConnectionError),
    ("bare exception from aiormq", Exception("stop_app"), "bob", BrokerConnectionError),
]


@pytest.mark.parametrize(
    ("raised", "recipient", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_broker_failure_maps_to_one_typed_error(
    raised: BaseException, recipient: str | None, expected: type[Exception]
) -> None:
    with pytest.raises(expected) as info, map_exceptions(publish_errors(attempt(recipient))):
        raise raised
    assert type(info.value) is expected  # not a subclass: the most specific error
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_lost_link_reports_why_the_connection_gave_up() -> None:
    given_up = BrokerConnectionError("vhost revoked")
    table = publish_errors(attempt(failure=given_up))
    with pytest.raises(BrokerConnectionError, match="vhost revoked"), map_exceptions(table):
        raise ConnectionResetError()


async def test_a_dropped_confirm_is_a_lost_link_but_a_cancelled_caller_stays_cancelled() -> None:
    table = publish_errors(attempt())
    with pytest.raises(BrokerConnectionError, match="no heartbeat"), map_exceptions(table):
        raise asyncio.CancelledError()

    publishing = asyncio.Event()

    async def publishing_forever() -> None:
        with map_exceptions(publish_errors(attempt())):
            publishing.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(publishing_forever())
    await publishing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_nack_from_quorum_lanes_without_a_limit_means_no_majority() -> None:
    """A quorum lane with no length limit cannot be full: its nack is a lane without a
    majority, a typed error of its own (the message is nowhere; sending later may work)."""
    quorum = PublishAttempt(
        "m1", "ns", "task.2.alice.bob", "bob", 5.0, lambda: None, nack_means_unavailable=True
    )
    table = publish_errors(quorum)
    with pytest.raises(InboxUnavailableError, match="no majority"), map_exceptions(table):
        raise DeliveryError(None, Basic.Nack())
