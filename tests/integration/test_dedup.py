"""The dedup window while the first copy of a message is still in hand.

A copy can come back while its first copy is being handled: redelivered after a
connection loss, or sent again by a sender that never got its confirm, on the same
lane or (another priority) on another. The agent waits for the copy in hand: handled,
the second is a duplicate and skipped; failed, the second is handled (at least once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest

from amqp_agents import Message, MessagePassingAgent, MessagePriority, MessageQueue, MessageType
from amqp_agents.retry import RetryPolicy

MakeQueue = Callable[..., Awaitable[MessageQueue]]
TIMEOUT_S = 10.0


class LogLine(logging.Handler):
    """Sets :attr:`seen` once a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@contextmanager
def watching(caplog: pytest.LogCaptureFixture, *lines: LogLine) -> Iterator[None]:
    """Attach ``lines`` to the agent's logger, debug records included."""
    logger = logging.getLogger("amqp_agents.agent")
    caplog.set_level(logging.DEBUG, logger=logger.name)
    for line in lines:
        logger.addHandler(line)
    try:
        yield
    finally:
        for line in lines:
            logger.removeHandler(line)


def copy_of(original: Message, priority: MessagePriority) -> Message:
    """The same message (same id) sent again, at ``priority``."""
    return Message(
        id=original.id,
        sender=original.sender,
        recipient=original.recipient,
        type=MessageType.NOTIFICATION,
        priority=priority,
        content=original.content,
    )


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
@pytest.mark.parametrize(
    ("second_priority", "first_fails", "handled"),
    [
        pytest.param(MessagePriority.NORMAL, False, 1, id="same-lane-handled-once"),
        pytest.param(MessagePriority.URGENT, False, 1, id="other-lane-handled-once"),
        pytest.param(MessagePriority.NORMAL, True, 2, id="first-failed-second-runs"),
        pytest.param(MessagePriority.URGENT, True, 2, id="first-failed-other-lane-runs"),
    ],
)
async def test_a_copy_arriving_while_the_first_is_in_hand(
    make_queue: MakeQueue,
    caplog: pytest.LogCaptureFixture,
    queue_type: str,
    second_priority: MessagePriority,
    first_fails: bool,
    handled: int,
) -> None:
    queue = await make_queue(queue_type=queue_type)
    agent = MessagePassingAgent(
        "once", queue, concurrency=2, dedup_window=10, retry=RetryPolicy(max_attempts=1)
    )
    calls: list[str] = []
    in_hand, release, second_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @agent.on(MessageType.NOTIFICATION)
    async def handle(message: Message) -> None:
        calls.append(message.id)
        if len(calls) == 1:
            in_hand.set()
            await release.wait()
            if first_fails:
                raise RuntimeError("the first copy's handler fails")
        else:
            second_done.set()

    first = Message(sender="x", recipient="once", type=MessageType.NOTIFICATION, content="fx")
    waiting = LogLine(f"message {first.id} in hand already")
    skipped = LogLine(f"duplicate of {first.id} skipped")
    await agent.start_consuming()
    try:
        with watching(caplog, waiting, skipped):
            await queue.send(first)
            await asyncio.wait_for(in_hand.wait(), TIMEOUT_S)
            await queue.send(copy_of(first, second_priority))
            await asyncio.wait_for(waiting.seen.wait(), TIMEOUT_S)
            release.set()
            done = skipped.seen if handled == 1 else second_done
            await asyncio.wait_for(done.wait(), TIMEOUT_S)
    finally:
        release.set()
        await agent.stop()
    assert calls == [first.id] * handled
