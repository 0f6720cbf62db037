"""HistoryQuery: refused arguments, and the header screen agreeing with the full decode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from amqp_agents import Message, wire
from amqp_agents.errors import HistoryQueryError
from amqp_agents.history import HistoryQuery

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "arguments",
    [
        {"since": T0, "until": T0 - timedelta(seconds=1)},
        {"limit": 0},
        {"since": datetime(2026, 5, 1)},
        {"until": datetime(2026, 5, 1)},
    ],
    ids=["since-after-until", "limit-0", "naive-since", "naive-until"],
)
def test_unusable_arguments_raise_a_typed_error(arguments: dict[str, Any]) -> None:
    with pytest.raises(HistoryQueryError):
        HistoryQuery(**arguments)


MESSAGES = [
    Message(sender="alice", recipient="bob", conversation_id="c1", timestamp=T0),
    Message(sender="bob", recipient="carol", conversation_id="c2", timestamp=T0),
    Message(sender="carol", recipient="", timestamp=T0 + timedelta(seconds=5)),
    Message(sender="", recipient="alice", conversation_id="c1", timestamp=T0 - timedelta(1)),
]
QUERIES = [
    HistoryQuery(conversation_id="c1"),
    HistoryQuery(conversation_id="c2"),
    HistoryQuery(agent_id="alice"),
    HistoryQuery(agent_id="carol"),
    HistoryQuery(since=T0),
    HistoryQuery(until=T0),
    HistoryQuery(agent_id="bob", since=T0, until=T0 + timedelta(seconds=1)),
]


@pytest.mark.parametrize("query", QUERIES, ids=repr)
def test_the_header_screen_never_drops_a_match(query: HistoryQuery) -> None:
    for message in MESSAGES:
        headers = wire.encode(message).headers
        if query.matches(message):
            assert query.may_match(headers), message
        else:
            assert not query.may_match(headers), "our own headers decide exactly"


def test_headers_that_are_not_text_are_left_to_the_decoder() -> None:
    query = HistoryQuery(agent_id="alice")
    assert query.may_match({wire.H_SENDER: b"alice", wire.H_RECIPIENT: "bob"})
    assert query.may_match({wire.H_RECIPIENT: "bob"}), "sender from the routing key"
