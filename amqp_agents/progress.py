"""A handler's progress reports: status messages, partial results, and "working".

Each is a STATUS answer to the message being handled, sent where its reply goes
(its requester's reply queue; history keeps a copy), with the metadata of
:mod:`amqp_agents.task_state`: ``task_state`` for a named state, ``chunk`` (0, 1,
2, ...) for a partial result. Sent one after another on one channel, they arrive in
order.

"working" is announced only for a TASK whose handler is still running
:data:`WORKING_AFTER_S` after it started and has reported nothing yet: a task that
answers at once costs no extra message (the request/response hot path), one that works
longer (an LLM call) shows it is being worked on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from .client import BrokerClient
from .errors import AgentsError
from .message import Message, MessageType
from .outcomes import answer, send_reply
from .task_state import CHUNK_KEY, STATE_KEY, TaskState

log = logging.getLogger(__name__)

WORKING_AFTER_S = 0.2
"""A task still running this long after its handler started is announced "working"."""

_announcing: set[asyncio.Future[None]] = set()


@dataclass(slots=True)
class Handling:
    """The message a handler is working on, and where its answers go."""

    agent_id: str
    client: BrokerClient
    message: Message
    reply_address: str | None
    chunks: int = 0
    reported: bool = False
    """Whether a report was sent (it says the task is being worked on: no "working")."""
    _notice: asyncio.TimerHandle | None = None

    async def report(self, content: Any, metadata: dict[str, Any]) -> None:
        """Send a STATUS answer with ``metadata`` (confirmed, or logged if undeliverable)."""
        self.reported = True
        status = answer(self.agent_id, self.message, MessageType.STATUS, content)
        status.metadata.update(metadata)
        await send_reply(self.client, status, self.reply_address)

    async def chunk(self, content: Any) -> None:
        """Send the next partial result."""
        number, self.chunks = self.chunks, self.chunks + 1
        await self.report(content, {CHUNK_KEY: number})

    def announce_working(self) -> None:
        """Announce "working" after :data:`WORKING_AFTER_S`, unless :meth:`done` first."""
        if self.message.type is MessageType.TASK and self.reply_address:
            loop = asyncio.get_running_loop()
            self._notice = loop.call_later(WORKING_AFTER_S, self._announce)

    def done(self) -> None:
        """The handler ended: no "working" any more."""
        if self._notice is not None:
            self._notice.cancel()

    def _announce(self) -> None:
        if not self.reported:  # a report already said so
            task = asyncio.ensure_future(self._send_working())
            _announcing.add(task)  # a task nobody holds may be collected mid-way
            task.add_done_callback(_announcing.discard)

    async def _send_working(self) -> None:
        try:
            await self.report(None, {STATE_KEY: TaskState.WORKING.value})
        except AgentsError as exc:
            log.debug("%s: 'working' for %s not sent: %s", self.agent_id, self.message.id, exc)
