"""A user's own agent test with ``amqp_agents.testing``: no broker, no real waiting.

The scenario of the tutorial (a researcher and a writer), a handler that fails once and
succeeds on its retry, and one that fails for good and ends in the dead letters, all
on ``memory://`` under a virtual clock; it must run in well under a second.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from amqp_agents import HandlerError, MessagePassingAgent, MessageQueue, RemoteError, RetryPolicy
from amqp_agents.testing import VirtualClock, dead_letters, running


class Researcher(MessagePassingAgent):
    """Fails on its first try of a topic (a flaky source), answers on the retry."""

    tries: dict[str, int]

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        self.tries[task] = self.tries.get(task, 0) + 1
        if self.tries[task] == 1:
            raise ConnectionError("source unavailable")
        return f"notes on {task}"


class Writer(MessagePassingAgent):
    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        if not context.get("research"):
            raise HandlerError("nothing to write from")
        return f"article from {context['research']}"


async def test_research_retry_and_dead_letter_in_memory(
    memory_queue: MessageQueue, virtual_clock: VirtualClock
) -> None:
    started = time.perf_counter()
    researcher = Researcher("researcher", memory_queue, retry=RetryPolicy(3, (30.0,)))
    researcher.tries = {}
    writer = Writer("writer", memory_queue)
    boss = MessagePassingAgent("boss", memory_queue)

    async with running(researcher) as research, running(writer) as writing:
        notes = await boss.send_task("researcher", "AI trends", timeout=60)
        article = await boss.send_task("writer", "write", context={"research": notes}, timeout=60)
        with pytest.raises(RemoteError, match="nothing to write from"):
            await boss.send_task("writer", "write", context={}, timeout=60)

    assert notes == "notes on AI trends"
    assert article == "article from notes on AI trends"
    first, retried = research.handled
    assert isinstance(first.error, ConnectionError) and retried.result == notes
    assert retried.message.id == first.message.id  # the same message, retried
    assert [h.error is None for h in writing.handled] == [True, False]
    [dead] = await dead_letters(memory_queue)
    assert (dead.reason, dead.agent, dead.error_type) == (
        "handler failed",
        "writer",
        "HandlerError",
    )
    assert dead.message.content == {"description": "write", "context": {}}
    assert virtual_clock.elapsed_s >= 30.0  # the retry waited its 30 s, virtually
    assert time.perf_counter() - started < 1.0
