"""The tutorial's scenario on a real broker: a coordinator, a researcher and a writer.

Deterministic without an LLM. With ``OPENAI_API_KEY`` set and the ``openai`` package
installed, the two workers ask the model instead (any OpenAI-compatible endpoint via
``OPENAI_BASE_URL``).
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .agent import MessagePassingAgent
from .llm import client_from_env, complete_task
from .message import Message, MessageType
from .queue import MessageQueue
from .rpc import TaskHandle


class ResearchAgent(MessagePassingAgent):
    """Researches a topic (canned answer unless an LLM client is configured).

    With routes (config/agents.example.yaml) its findings also go out without
    recipient, so the routes hand them on: there, to the writer.
    """

    async def _handle_task(self, message: Message) -> Any:
        research = await super()._handle_task(message)
        await pass_on(self, research, message)
        return research

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        if self.llm is not None:
            return await complete_task(self.llm, self.model, task, context)
        await self.send_status({"step": "searching sources"})
        return f"Research completed on: {task}"


class WriterAgent(MessagePassingAgent):
    """Writes an article from the research in its task's context, and streams it: each
    piece goes to the requester as a partial result (``send_chunk``) as it is written.

    With routes, findings routed to it (a RESULT from another agent) are written up
    too, and the article goes out without recipient: in the example, to the
    coordinator and the monitor.
    """

    def _setup_handlers(self) -> None:
        super()._setup_handlers()
        self.handlers[MessageType.RESULT] = self._write_up

    async def _write_up(self, findings: Message) -> None:
        task = f"Write an article from the findings of {findings.sender}"
        article = await self._write(task, {"research": findings.content})
        await pass_on(self, article, findings)

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        if self.llm is None:
            await self.send_status({"step": "drafting"})
        article = await self._write(task, context)
        for piece in pieces(str(article)):
            await self.send_chunk(piece)
        return article

    async def _write(self, task: str, context: dict[str, Any]) -> Any:
        if self.llm is not None:
            return await complete_task(self.llm, self.model, task, context)
        return f"Article written based on: {context.get('research', '')}"


def pieces(text: str) -> list[str]:
    """``text`` cut after each ": ", sentence end or newline, the cuts kept: the pieces
    a writer streams (an LLM streams tokens; a canned answer has none).

    >>> pieces("Article written based on: Research completed on: AI")
    ['Article written based on: ', 'Research completed on: ', 'AI']
    """
    return [piece for piece in re.split(r"(?<=[:.!?\n] )|(?<=\n)", text) if piece]


async def pass_on(agent: MessagePassingAgent, content: Any, handled: Message) -> None:
    """Publish ``content`` as a RESULT without recipient, if the agent's routes take it.

    Only a client given routes (``router=``) knows them; without (the ``demo``
    command) nothing is sent. The message continues ``handled``'s conversation.
    """
    router = agent.queue.router
    if router is None:
        return
    result = Message(
        sender=agent.id,
        type=MessageType.RESULT,
        priority=handled.priority,
        content=content,
        conversation_id=handled.conversation_id,
    )
    if router.get_destinations(result):
        await agent.queue.send(result)


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


async def run_demo(
    queue: MessageQueue,
    *,
    timeout_s: float = 60.0,
    on_piece: Callable[[str], None] = lambda _piece: None,
) -> DemoResult:
    """Run the scenario on a connected queue and read its conversation back from history.

    ``on_piece`` is called with each piece of the article as the writer streams it.
    """
    llm = client_from_env()
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
        writing: TaskHandle = await coordinator.send_task(
            "writer",
            "Write an article about AI trends",
            context={"research": research},
            timeout=timeout_s,
            conversation_id=conversation_id,
            wait_for_result=False,
        )
        async with asyncio.timeout(timeout_s):
            async for update in writing.updates():
                if update.chunk is not None:
                    on_piece(str(update.content))
        article = await writing.result()
    finally:
        await researcher.stop()
        await writer.stop()
    timeline = await queue.get_conversation(conversation_id)
    used = model if llm is not None else None
    return DemoResult(str(research), str(article), conversation_id, timeline, used)
