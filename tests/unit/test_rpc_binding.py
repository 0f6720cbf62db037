"""A requester takes an answer only if it answers the question it asked.

Anyone may write into a reply queue (through ``{ns}.replies``) and its name travels in
every request, so :meth:`ReplyListener.refusal` decides, per reply, whether it answers
a request waiting here: the right id, from the agent asked, addressed to the request's
sender, and with a ``user_id`` that may speak for the agent asked.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractChannel

from amqp_agents import ConfigError, Message, MessageType
from amqp_agents.outcomes import answer
from amqp_agents.rpc import ReplyListener, task_deadline
from amqp_agents.senders import SenderPolicy

from .test_admission import delivery

QUESTION = Message(sender="alice", recipient="bob", type=MessageType.TASK, content="q")
MALLORYS = Message(
    id=QUESTION.id, sender="mallory", recipient="bob", type=MessageType.TASK, content="q"
)
"""Mallory's request reusing Alice's id (and, say, Alice's reply queue)."""


def reply(request: Message = QUESTION, sender: str = "bob", **over: Any) -> Message:
    return answer(sender, request, MessageType.RESULT, "a").model_copy(update=over)


CASES: list[tuple[str, Message, str | None, str | None]] = [
    ("bob's answer to alice", reply(), "bob", None),
    ("bob's status report", reply(type=MessageType.STATUS), "bob", None),
    ("no request of that id", reply(reply_to="another id"), "bob", "answers no request"),
    ("from another agent", reply(sender="carol"), "carol", "the request went to 'bob'"),
    ("bob's answer to mallory's reused id", reply(MALLORYS), "bob", "addressed to 'mallory'"),
    ("bob as sender, mallory's user_id", reply(), "mallory", "unauthenticated sender"),
    ("bob as sender, no user_id", reply(), None, "unauthenticated sender"),
]


@pytest.mark.parametrize(
    ("reply_message", "user_id", "refused"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_a_reply_is_taken_only_as_the_answer_to_the_question_asked(
    reply_message: Message, user_id: str | None, refused: str | None
) -> None:
    listener = ReplyListener(
        cast(AbstractChannel, None), "ns", "alice", senders=SenderPolicy("alice")
    )
    listener.expect(QUESTION)
    got = listener.refusal(delivery(reply_message, user_id=user_id), reply_message)
    if refused is None:
        assert got is None
    else:
        assert got is not None and refused in got, got


@pytest.mark.parametrize("timeout_s", [0, -1, 24 * 3600 + 1, float("inf")])
def test_a_task_timeout_an_agent_would_not_honour_is_refused(timeout_s: float) -> None:
    with pytest.raises(ConfigError, match="at most 86400s"):
        task_deadline(timeout_s)


@pytest.mark.parametrize("timeout_s", [0.01, 30, 24 * 3600])
def test_a_task_timeout_within_the_day_gives_its_deadline(timeout_s: float) -> None:
    before = datetime.now(UTC)
    deadline = task_deadline(timeout_s)
    assert (
        before + timedelta(seconds=timeout_s)
        <= deadline
        <= datetime.now(UTC) + timedelta(seconds=timeout_s)
    )
