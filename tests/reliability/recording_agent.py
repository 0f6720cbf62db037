"""An agent class for ``amqp-agents run`` in the security suite: it reports what it handles.

Configured as ``class: "recording_agent:RecordingAgent"`` (with this directory on
``PYTHONPATH``). Every message any of its handlers gets is one line on stdout, flushed
at once, so the test reading the run's output sees exactly what reached a handler::

    handled <message id> <sender> <type>

A task or request is answered with ``"<agent id> answers <content>"``.
"""

from __future__ import annotations

import sys
from typing import Any

from amqp_agents import Message, MessagePassingAgent, MessageType

HANDLED = "handled"


class RecordingAgent(MessagePassingAgent):
    """Reports every message it handles on stdout; answers tasks and requests."""

    def __init__(self, agent_id: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(agent_id, *args, **kwargs)
        for msg_type in MessageType:
            self.on(msg_type)(self._record)

    def report(self, message: Message) -> None:
        """Say that a handler got ``message`` (a subclass in the test's process records it)."""
        sys.stdout.write(f"{HANDLED} {message.id} {message.sender} {message.type.value}\n")
        sys.stdout.flush()

    async def _record(self, message: Message) -> Any:
        self.report(message)
        if message.type in (MessageType.TASK, MessageType.REQUEST):
            return f"{self.id} answers {message.content}"
        return None
