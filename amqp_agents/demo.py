"""The tutorial's scenario on a real broker: a coordinator, a researcher and a writer.

Deterministic without an LLM. With ``OPENAI_API_KEY`` set and the ``openai`` package
installed, the two workers ask the model instead (any OpenAI-compatible endpoint via
``OPENAI_BASE_URL``).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from .agent import MessagePassingAgent
from .message import Message
from .queue import MessageQueue


class ResearchAgent(MessagePassingAgent):
    """Researches a topic (canned answer unless an LLM client is configured)."""

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        if self.llm is not None:
            return await super()._process_task(task, context)
        await self.send_status({"step": "searching sources"})
        return f"Research completed on: {task}"


class WriterAgent(MessagePassingAgent):
    """Writes an article from the research in its task's context."""

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        if self.llm is not None:
            return await super()._process_task(task, context)
        await self.send_status({"step": "drafting"})
        return f"Article written based on: {context.get('research', '')}"


def llm_client_from_env() -> Any:
    """An OpenAI-compatible async client if one is configured, else None."""
    if not os.environ.get("OPENAI_API_KEY"):
        return None
    try:
        from openai import AsyncOpenAI
    except ImportError:
        return None
    return AsyncOpenAI()


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo produced: the research, the article and the conversation.

    ``model`` is the LLM that answered; None when the answers are canned.
    """

    research: str
    article: str
    conversation_id: str
    timeline: list[Message]
    model: str | None = None


async def run_demo(queue: MessageQueue, *, timeout_s: float = 60.0) -> DemoResult:
    """Run the scenario on a connected queue and read its conversation back from history."""
    llm = llm_client_from_env()
    model = os.environ.get("AMQP_AGENTS_MODEL", "gpt-4o-mini")
    researcher = ResearchAgent("researcher", queue, llm, model=model)
    writer = WriterAgent("writer", queue, llm, model=model)
    coordinator = MessagePassingAgent("coordinator", queue)
    await queue.ensure_inbox("coordinator")
    await researcher.start_consuming()
    await writer.start_consuming()
    conversation_id = str(uuid.uuid4())
    try:
        research = await coordinator.send_task(
            "researcher",
            "Research AI trends for 2024",
            timeout=timeout_s,
            conversation_id=conversation_id,
        )
        article = await coordinator.send_task(
            "writer",
            "Write an article about AI trends",
            context={"research": research},
            timeout=timeout_s,
            conversation_id=conversation_id,
        )
    finally:
        await researcher.stop()
        await writer.stop()
    timeline = await queue.get_conversation(conversation_id)
    used = model if llm is not None else None
    return DemoResult(str(research), str(article), conversation_id, timeline, used)
