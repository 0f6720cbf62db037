"""The tutorial's default handlers: what an agent does with a message when no handler
was registered for its type.

A TASK runs ``_process_task(description, context)`` (the LLM client given to the agent,
if any), a REQUEST ``_process_request(content)``, a NOTIFICATION is logged. Subclasses
of :class:`~amqp_agents.agent.MessagePassingAgent` override these; a base class of
their own so that agent.py keeps to the consume loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import HandlerError
from .llm import complete_task
from .message import Message, MessageType

log = logging.getLogger("amqp_agents.agent")

Handler = Callable[[Message], Awaitable[Any]]


class DefaultHandlers:
    """The default handler table and the methods behind it (see the module)."""

    id: str
    llm: Any
    model: str
    handlers: dict[MessageType, Handler]

    def _setup_handlers(self) -> None:
        """Install the default handlers (the tutorial's three)."""
        self.handlers[MessageType.TASK] = self._handle_task
        self.handlers[MessageType.REQUEST] = self._handle_request
        self.handlers[MessageType.NOTIFICATION] = self._handle_notification

    async def _handle_task(self, message: Message) -> Any:
        """Run ``_process_task`` on a task's description and context."""
        content = message.content if isinstance(message.content, dict) else {}
        description = content.get("description", message.content)
        context = content.get("context") or {}
        return await self._process_task(description, context)

    async def _handle_request(self, message: Message) -> Any:
        """Answer a request with ``_process_request``."""
        return await self._process_request(message.content)

    async def _handle_notification(self, message: Message) -> None:
        """Log a notification; it needs no reply."""
        log.info("[%s] notification from %s: %r", self.id, message.sender, message.content)

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        """Complete a task; override for your agent's work.

        The default asks the ``llm_client`` given to the agent, if any (see
        :func:`amqp_agents.llm.complete_task`).

        Raises:
            HandlerError: no ``llm_client`` was given and this was not overridden (the
                requester gets it as a RemoteError, without retries).
        """
        if self.llm is None:
            raise HandlerError(
                f"agent {self.id!r} has no llm_client; pass one or override _process_task"
            )
        return await complete_task(self.llm, self.model, task, context)

    async def _process_request(self, request: Any) -> Any:
        """Answer a request; override in a subclass."""
        return f"Received request: {request}"
