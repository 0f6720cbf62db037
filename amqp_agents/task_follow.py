"""Following a task again from another connection: its answers, read back from history.

Every answer to a request goes through ``{ns}.replies``, and the history stream is bound
there, so it keeps each one, in the order the agent sent them. A requester whose
connection was cut (its reply queue died with it) calls
``queue.resubscribe(task)``: a stream consumer reads ``{ns}.history`` from just before
the task was sent, keeps every answer to it, and
follows the stream live until the final one. The handle it returns is a
:class:`TaskHandle` like any other: ``updates()`` yields what the agent sent before the
cut and after, in order, then the result.

:func:`find_task` reads history to its end for what it retains of a task (the task,
its deadline, its final answer): what ``amqp-agents cancel`` needs to know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from . import wire
from .cancellation import canceller
from .errors import HistoryTimeoutError, InvalidMessageError
from .history import CLOCK_SKEW, append_marker
from .history_reader import history_off
from .inbound import Inbound
from .message import Message, MessageType
from .rpc import TaskHandle
from .task_state import TaskLog, state_of

if TYPE_CHECKING:
    from .client import BrokerClient

log = logging.getLogger(__name__)

PREFETCH = 1000
"""History entries in flight to the follower."""


class _Follower:
    """The consumer callback: keeps a task's answers, resolves its future at the last."""

    def __init__(self, task_id: str, channel: AbstractChannel) -> None:
        self.task_id = task_id
        self.channel = channel
        self.log = TaskLog()
        self.future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

    async def on_entry(self, incoming: Inbound) -> None:
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await incoming.ack()
        ours = incoming.correlation_id == self.task_id or incoming.message_id == self.task_id
        if not ours or self.future.done():
            return
        try:
            message = wire.decode(incoming)
        except InvalidMessageError as exc:
            log.debug("resubscribe: entry %s skipped: %s", incoming.message_id, exc)
            return
        if message.reply_to != self.task_id or message.type is MessageType.NOTIFICATION:
            return
        if self.log.add(message).final:
            self.future.set_result(message)
            self.close()

    def close(self) -> None:
        """Stop following (closes the channel in the background)."""
        task = asyncio.ensure_future(self._close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    async def _close(self) -> None:
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await self.channel.close()


_closing: set[asyncio.Future[None]] = set()


async def resubscribe(
    client: BrokerClient,
    task: Message | str,
    *,
    since: datetime | None = None,
    timeout_s: float = 30.0,
) -> TaskHandle:
    """A handle on a task sent earlier (from this or another connection).

    Args:
        task: the task message (its timestamp tells where to start reading), or its id.
        since: read history from this time on (default: the task's timestamp; with
            only an id, the stream's first retained entry: slow on a long history).
        timeout_s: the handle's default wait for the result.

    Raises:
        HistoryOffError: the namespace keeps no history: nothing to follow.
    """
    if not client.options.keeps_history:
        raise history_off(client.namespace)
    task_id = task if isinstance(task, str) else task.id
    if since is None and isinstance(task, Message):
        since = task.timestamp
    channel = await client.channel(prefetch=PREFETCH)
    follower = _Follower(task_id, channel)
    start: datetime | str = "first" if since is None else since - CLOCK_SKEW
    stream = await channel.get_queue(wire.history_name(client.namespace), ensure=False)
    await stream.consume(follower.on_entry, arguments={"x-stream-offset": start})
    message = task if isinstance(task, Message) else Message(id=task_id)
    deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
    cancel = canceller(client)
    return TaskHandle(
        message, follower.future, timeout_s, follower.close, follower.log, cancel, deadline
    )


@dataclass(slots=True)
class FoundTask:
    """What history retains of a task: the task (None: not retained), its deadline, and
    its final answer (None: none yet)."""

    task: Message | None = None
    deadline: datetime | None = None
    final: Message | None = None


async def find_task(
    client: BrokerClient, task_id: str, *, since: datetime | None = None, timeout_s: float = 60.0
) -> FoundTask:
    """Read history to its current end (a marker, as history.py does) for ``task_id``.

    Raises:
        HistoryOffError: the namespace keeps no history.
        HistoryTimeoutError: the end was not reached within ``timeout_s``.
    """
    if not client.options.keeps_history:
        raise history_off(client.namespace)
    found = FoundTask()
    channel = await client.connection.channel(publisher_confirms=True)
    try:
        marker = await append_marker(channel, client.namespace)
        end = asyncio.get_running_loop().create_future()

        async def on_entry(incoming: Inbound) -> None:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await incoming.ack()
            headers = incoming.headers or {}
            if wire.H_HISTORY_MARKER in headers:
                if wire.header_text(headers[wire.H_HISTORY_MARKER]) == marker and not end.done():
                    end.set_result(None)
            elif task_id in (incoming.message_id, incoming.correlation_id):
                with contextlib.suppress(InvalidMessageError):
                    _note(found, task_id, wire.decode(incoming), incoming)

        await channel.set_qos(prefetch_count=PREFETCH)
        stream = await channel.get_queue(wire.history_name(client.namespace), ensure=False)
        start: datetime | str = "first" if since is None else since - CLOCK_SKEW
        await stream.consume(on_entry, arguments={"x-stream-offset": start})
        try:
            await asyncio.wait_for(end, timeout_s)
        except TimeoutError:
            raise HistoryTimeoutError(
                f"history of {client.namespace!r} not read to its end within {timeout_s}s"
                " (narrow it with --since)"
            ) from None
    finally:
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await channel.close()
    return found


def _note(found: FoundTask, task_id: str, message: Message, incoming: Inbound) -> None:
    if message.id == task_id and found.task is None:
        found.task, found.deadline = message, wire.deadline_of(incoming.headers)
    elif message.reply_to == task_id and state_of(message).final and found.final is None:
        found.final = message
