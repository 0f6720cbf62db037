"""Cancelling a task: the cancel record, and the agent's watch over the records.

A cancel is a record in the namespace's stream ``{ns}.cancels`` (published through
the fanout exchange of that name), not a message to the agent's inbox, because it
must reach the task wherever it is::

    queued in the inbox ──> skipped when it arrives: ERROR reply, state "canceled", ack
    running ──────────────> its handler is cancelled (asyncio), the same reply, ack;
                            the agent goes on, nothing is retried
    finished ─────────────> nothing to do (TaskHandle.cancel() says so)

The stream keeps the record, not the agent: an agent reads the stream when it starts,
and then follows it, so a cancel outlives an agent's restart. The agents of one
connection share that reader (:class:`CancelRecords`); each has its
:class:`CancelWatch` over it. A record carries the task's deadline; past it, the
task cannot run any more (the agent dead-letters it as expired) and readers drop the
record.

What a start replays is bounded by time, not only by the stream's retention: an agent
holds a task at most ``wire.MAX_TASK_DEADLINE_S`` after its timestamp (admission.py),
and a cancel is published after its task, so records older than that (plus
:data:`CLOCK_SKEW_S`) cannot cancel a task that may still run. The reader starts at
that age (``x-stream-offset`` as a timestamp) instead of the stream's first entry.

A record is honoured only when the RabbitMQ user that published it (its validated
``user_id``) may speak for the task's sender (senders.py): only the requester cancels.
The record's form is in docs/wire-format.md, "Cancelling a task".
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from . import wire
from .control_stream import StreamReader
from .inbound import Inbound
from .message import Message, MessageType
from .publish import Publisher, properties
from .senders import SenderPolicy

if TYPE_CHECKING:
    from .client import BrokerClient

log = logging.getLogger(__name__)

PRUNE_EVERY = 1000
"""Records read between two sweeps of those past their deadline."""

CLOCK_SKEW_S = 300.0
"""Slack for the clocks of requesters, broker and agents: the replay starts this much
earlier than the oldest task an agent may still run."""


def replay_start(now: datetime | None = None) -> datetime:
    """Where a starting agent reads the cancels stream from: the oldest record that may
    still cancel a task it could run (see the module's docstring)."""
    window_s = wire.MAX_TASK_DEADLINE_S + CLOCK_SKEW_S
    return (now or datetime.now(UTC)) - timedelta(seconds=window_s)


def cancel_record(task_id: str, *, sender: str, recipient: str) -> Message:
    """The cancel record of task ``task_id`` (its ``reply_to`` names the task)."""
    return Message(
        sender=sender,
        recipient=recipient,
        type=MessageType.NOTIFICATION,
        content={"cancel": task_id},
        reply_to=task_id,
    )


async def publish_cancel(
    publisher: Publisher, task_id: str, *, sender: str, recipient: str, deadline: datetime
) -> None:
    """Append the cancel record of a task to ``{ns}.cancels``, kept until ``deadline``.

    Raises:
        DeliveryError, BrokerConnectionError: as any confirmed publish.
    """
    record = cancel_record(task_id, sender=sender, recipient=recipient)
    publisher.senders.check_sendable(record)
    out = wire.encode(
        record,
        extra_headers={wire.H_DEADLINE_US: wire.to_us(deadline)},
        max_body_bytes=publisher.max_body_bytes,
    )
    exchange = wire.cancel_exchange_name(publisher.namespace)
    props = properties(out, publisher.user_id)
    await publisher.publish(exchange, "", out.body, props, record.id, traced=False)


def canceller(client: BrokerClient) -> Callable[[Message, datetime], Awaitable[None]]:
    """What cancels a task sent through ``client`` (``TaskHandle.cancel``)."""

    async def cancel(task: Message, deadline: datetime) -> None:
        await publish_cancel(
            client.publisher,
            task.id,
            sender=task.sender,
            recipient=task.recipient,
            deadline=deadline,
        )

    return cancel


@dataclass(frozen=True, slots=True)
class _Cancel:
    user_id: str | None
    deadline: datetime
    recipient: str


class CancelRecords:
    """The cancel records of a namespace as one connection reads them: every agent on
    the connection shares one stream consumer (one channel, one read at start), however
    many agents it serves. Started by the first :class:`CancelWatch`, stopped with the
    last. Get it with :meth:`of`."""

    def __init__(self, client: BrokerClient) -> None:
        self.client = client
        self.cancels: dict[str, list[_Cancel]] = {}
        """Per task, every live record read: one from a user who may not cancel it must
        not hide (replace) the requester's own."""
        self.watches: set[CancelWatch] = set()
        self._reader: StreamReader | None = None
        self._lock = asyncio.Lock()
        self._read = 0
        self._waiters: dict[str, asyncio.Future[None]] = {}

    @classmethod
    def of(cls, client: BrokerClient) -> CancelRecords:
        """The records of ``client``'s connection (made on first use)."""
        records = _records.get(client)
        if records is None:
            records = _records[client] = cls(client)
        return records

    async def join(self, watch: CancelWatch) -> None:
        """Add an agent's watch; the first one starts reading (returns once caught up).

        A namespace without the stream (declared by an older version, or not readable
        with this user's permissions) leaves the agents without cancellation, logged.
        """
        async with self._lock:
            self.watches.add(watch)
            if self._reader is not None:
                return
            ns = self.client.namespace
            self._reader = reader = StreamReader(
                await self.client.channel(),
                self.client.publisher,
                wire.cancel_stream_name(ns),
                wire.cancel_exchange_name(ns),
                self._on_record,
            )
            try:
                await reader.start(timeout_s=self.client.connect_timeout_s, start=replay_start())
            except Exception as exc:
                log.warning(
                    "cannot read the cancel records of %s (%s: %s); tasks of %s cannot be"
                    " cancelled",
                    wire.cancel_stream_name(ns),
                    type(exc).__name__,
                    exc,
                    watch.agent_id,
                )

    async def leave(self, watch: CancelWatch) -> None:
        """Remove an agent's watch; the last one stops reading."""
        async with self._lock:
            self.watches.discard(watch)
            if self.watches or self._reader is None:
                return
            reader, self._reader = self._reader, None
            self.cancels.clear()
            await reader.close()

    @property
    def entries_read(self) -> int:
        """Stream entries read since the reader started (its replay, then live ones)."""
        return 0 if self._reader is None else self._reader.entries

    async def received(self, task_id: str) -> None:
        """Return once a record for ``task_id`` was read (to know that a cancel has
        reached this connection's agents; bound it with a timeout)."""
        if task_id not in self.cancels:
            waiter = self._waiters.setdefault(task_id, asyncio.get_running_loop().create_future())
            await asyncio.shield(waiter)

    def _on_record(self, incoming: Inbound) -> None:
        deadline = wire.deadline_of(incoming.headers)
        task_id = incoming.correlation_id
        if deadline is None or not task_id or deadline <= datetime.now(UTC):
            return
        recipient = (incoming.headers or {}).get(wire.H_RECIPIENT)
        recipient = recipient if isinstance(recipient, str) else ""
        self.cancels.setdefault(task_id, []).append(_Cancel(incoming.user_id, deadline, recipient))
        self._read += 1
        if self._read % PRUNE_EVERY == 0:
            now = datetime.now(UTC)
            self.cancels = {
                task: live
                for task, records in self.cancels.items()
                if (live := [c for c in records if c.deadline > now])
            }
        for watch in self.watches:
            watch.interrupt(task_id)
        if (waiter := self._waiters.pop(task_id, None)) is not None and not waiter.done():
            waiter.set_result(None)


_records: weakref.WeakKeyDictionary[BrokerClient, CancelRecords] = weakref.WeakKeyDictionary()


class CancelWatch:
    """An agent's view of the cancel records: which of its tasks are cancelled, and the
    handlers it cancels when a record for a running task arrives.

    Args:
        agent_id: the agent (records addressed to another agent are ignored).
        senders: who may cancel whose tasks.
    """

    def __init__(self, agent_id: str, senders: SenderPolicy) -> None:
        self.agent_id = agent_id
        self.senders = senders
        self._records: CancelRecords | None = None
        self._running: dict[str, tuple[asyncio.Task[object], Message]] = {}
        self._interrupted: set[str] = set()

    async def start(self, client: BrokerClient) -> None:
        """Follow the records of ``client``'s connection (returns once caught up)."""
        self._records = CancelRecords.of(client)
        await self._records.join(self)

    async def stop(self) -> None:
        """Stop following the records."""
        records, self._records = self._records, None
        if records is not None:
            await records.leave(self)

    def cancels(self, message: Message) -> bool:
        """Whether a record cancels ``message`` (a task this agent holds)."""
        records = () if self._records is None else self._records.cancels.get(message.id, ())
        now = datetime.now(UTC)
        return any(
            cancel.deadline > now
            and cancel.recipient in ("", self.agent_id)
            and self.senders.may_speak_for(cancel.user_id, message.sender)
            for cancel in records
        )

    @contextmanager
    def running(self, message: Message) -> Iterator[None]:
        """While the body runs ``message``'s handler, a record for it cancels the task."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - handlers run in tasks
            yield
            return
        self._running[message.id] = (task, message)
        try:
            yield
        finally:
            del self._running[message.id]
            if message.id in self._interrupted:
                task.uncancel()  # our cancel, not the task's: it goes on to reply and ack

    def interrupted(self, message: Message) -> bool:
        """Whether a cancel record (not a stop, not the link) cancelled its handler."""
        if message.id in self._interrupted:
            self._interrupted.discard(message.id)
            return True
        return False

    def interrupt(self, task_id: str) -> None:
        """A record for ``task_id`` arrived: cancel its handler if it runs here."""
        running = self._running.get(task_id)
        if running is not None and task_id not in self._interrupted and self.cancels(running[1]):
            task, _ = running
            self._interrupted.add(task_id)
            task.cancel(f"task {task_id} cancelled by its requester")
            log.info("%s: task %s cancelled while running", self.agent_id, task_id)
