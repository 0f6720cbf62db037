"""A task's state in A2A's vocabulary, read off the messages that answer it (pure).

Google's A2A protocol names seven task states; our messages map onto them so::

    TASK sent ─────────────────────────────> submitted
    STATUS, metadata task_state "working" ──> working       (the agent started it)
    STATUS, metadata task_state
        "input-required" ──────────────────> input-required
    STATUS, metadata chunk N ──────────────> working       (a partial result)
    STATUS without those keys ─────────────> working       (progress, send_status)
    RESULT / RESPONSE ─────────────────────> completed
    ERROR, metadata task_state "canceled" ─> canceled      (skipped or stopped)
    ERROR, metadata task_state "rejected" ─> rejected      (its payload did not fit)
    ERROR otherwise ───────────────────────> failed

The two metadata keys (:data:`STATE_KEY`, :data:`CHUNK_KEY`) travel in ``x-metadata``
like any metadata (docs/wire-format.md, "Task states"). A :class:`TaskLog` keeps
the updates of one task as they arrive, for :meth:`TaskHandle.updates` to iterate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .message import Message, MessageType


class TaskState(StrEnum):
    """A2A's task states; the value is A2A's spelling."""

    SUBMITTED = "submitted"
    WORKING = "working"
    INPUT_REQUIRED = "input-required"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        """Whether no update follows this state."""
        return self in _FINAL


_FINAL = {TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED, TaskState.REJECTED}

STATE_KEY = "task_state"
"""Metadata key of a STATUS or ERROR that names the state it puts the task in."""
CHUNK_KEY = "chunk"
"""Metadata key of a STATUS carrying a partial result: its sequence number from 0."""

_STATUS_STATES = {TaskState.WORKING, TaskState.INPUT_REQUIRED}
_ERROR_STATES = {TaskState.CANCELED, TaskState.REJECTED, TaskState.FAILED}


def state_of(reply: Message) -> TaskState:
    """The state an answer to a task puts it in (see the module's table).

    >>> state_of(Message(type="result"))
    <TaskState.COMPLETED: 'completed'>
    >>> state_of(Message(type="error", metadata={"task_state": "canceled"}))
    <TaskState.CANCELED: 'canceled'>
    """
    named = reply.metadata.get(STATE_KEY)
    if reply.type is MessageType.STATUS:
        return TaskState(named) if named in _STATUS_STATES else TaskState.WORKING
    if reply.type is MessageType.ERROR:
        return TaskState(named) if named in _ERROR_STATES else TaskState.FAILED
    if reply.type in (MessageType.RESULT, MessageType.RESPONSE):
        return TaskState.COMPLETED
    return TaskState.SUBMITTED


def chunk_of(reply: Message) -> int | None:
    """The sequence number of a partial result, or None (not one)."""
    value = reply.metadata.get(CHUNK_KEY)
    if reply.type is MessageType.STATUS and isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """One answer to a task, as :meth:`TaskHandle.updates` yields it.

    Attributes:
        state: the state it puts the task in.
        content: the message's content (a chunk's text, a status, the result...).
        chunk: a partial result's sequence number; None for anything else.
        message: the message itself.
    """

    state: TaskState
    content: Any
    chunk: int | None
    message: Message

    @property
    def final(self) -> bool:
        """Whether this is the last update (the result or the error)."""
        return self.state.final

    @classmethod
    def of(cls, reply: Message) -> TaskUpdate:
        """The update ``reply`` is."""
        return cls(state_of(reply), reply.content, chunk_of(reply), reply)


@dataclass(slots=True)
class TaskLog:
    """The updates of one task in arrival order, and its state.

    Every update is kept (a task's progress is bounded by the task), so iterating
    :meth:`follow` late still yields them all, from the first.
    """

    state: TaskState = TaskState.SUBMITTED
    updates: list[TaskUpdate] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, reply: Message) -> TaskUpdate:
        """Record an answer; returns its update (nothing changes once final)."""
        update = TaskUpdate.of(reply)
        if self.state.final:
            return update
        self.state = update.state
        self.updates.append(update)
        self._changed.set()
        return update

    def end(self, state: TaskState) -> None:
        """End the log without an answer (the requester cancelled, the link was lost)."""
        if not self.state.final:
            self.state = state
            self._changed.set()

    async def follow(self) -> AsyncIterator[TaskUpdate]:
        """Yield every update, waiting for more, until the final one (or :meth:`end`)."""
        seen = 0
        while True:
            while seen < len(self.updates):
                seen += 1
                yield self.updates[seen - 1]
            if self.state.final:
                return
            self._changed.clear()
            await self._changed.wait()
