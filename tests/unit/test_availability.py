"""Temporary is temporary: the one table of what a broker refusal of a declaration or a
consume means, and the retry that waits out an unavailable queue."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)

from amqp_agents import QueueUnavailableError, TopologyError
from amqp_agents.declaring import retry_unavailable
from amqp_agents.errors import map_exceptions
from amqp_agents.topology import declaration_errors

HOME_NODE_DOWN = (
    "NOT_FOUND - home node 'rabbit@b' of durable queue 'ns.dead' in vhost '/' is down or"
    " inaccessible"
)

CASES = [
    ("home node down", ChannelNotFoundEntity(HOME_NODE_DOWN), QueueUnavailableError),
    ("quorum leader election", ChannelPreconditionFailed("timeout"), QueueUnavailableError),
    ("quorum member gone", ChannelNotFoundEntity("noproc"), QueueUnavailableError),
    ("access refused", ChannelAccessRefused("ACCESS_REFUSED - no configure"), TopologyError),
    ("missing", ChannelNotFoundEntity("NOT_FOUND - no queue 'ns.dead'"), TopologyError),
    (
        "inequivalent",
        ChannelPreconditionFailed("PRECONDITION_FAILED - inequivalent arg 'x-max-length'"),
        TopologyError,
    ),
]


@pytest.mark.parametrize(("raised", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_refusal_is_temporary_or_fatal(
    raised: BaseException, expected: type[Exception]
) -> None:
    table = declaration_errors("queue", "ns.dead", "ns", passive=False)
    with pytest.raises(expected) as info, map_exceptions(table):
        raise raised
    assert type(info.value) is expected


def test_a_queue_of_the_other_type_names_the_way_out() -> None:
    refused = ChannelPreconditionFailed(
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'ns.dead' in vhost"
        " '/': received 'quorum' but current is 'classic'"
    )
    table = declaration_errors("queue", "ns.dead", "ns", passive=False)
    with (
        pytest.raises(TopologyError, match=r"another queue type.*classic to quorum"),
        map_exceptions(table),
    ):
        raise refused


async def test_an_unavailable_queue_is_retried_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = 0

    async def declare() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise QueueUnavailableError(HOME_NODE_DOWN)
        return "declared"

    with caplog.at_level(logging.INFO, logger="amqp_agents.declaring"):
        assert await retry_unavailable(declare, 10.0, "the namespace") == "declared"
    assert attempts == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one line per episode, not per attempt"
    assert any("available again" in r.getMessage() for r in caplog.records)


async def test_an_unavailable_queue_raises_after_the_timeout() -> None:
    async def declare() -> None:
        raise QueueUnavailableError(HOME_NODE_DOWN)

    async with asyncio.timeout(5):
        with pytest.raises(QueueUnavailableError):
            await retry_unavailable(declare, 0.3, "the namespace")
