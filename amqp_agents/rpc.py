"""The RPC client: requests that wait for their reply, over one private reply queue.

:class:`RpcClient` sends a request and hands back a :class:`TaskHandle`; its
:class:`ReplyListener`, one per broker connection, keeps the pending calls.

Requests carry ``reply_to`` = this queue's name, which is bound to ``{ns}.replies`` with
that name as key; replies (and STATUS progress reports) come back through that exchange
with ``correlation_id`` = the request's id and resolve a future kept here,
as in aio-pika's RPC pattern. Anyone who may write to ``{ns}.replies`` (every agent)
can put a message into the queue, and its name travels in every request, so a reply
is taken only when it answers a request sent from here, comes from the agent asked,
is addressed back to the request's sender, and its ``user_id`` may speak for the
agent asked (:meth:`ReplyListener.refusal`). Replies never pass through an agent's inbox, so waiting
for one never takes, delays or drops any other message addressed to the agent, and a
handler that waits for a sub-task cannot deadlock the inbox's prefetch window.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustChannel
from aiormq.exceptions import ChannelAccessRefused

from . import instrumentation, wire
from ._delivery_tap import FrameSwitch
from .errors import (
    BrokerConnectionError,
    ConfigError,
    InvalidMessageError,
    RemoteError,
    RequestTimeoutError,
    TaskCancelledError,
    TopologyError,
    map_exceptions,
)
from .inbound import Inbound
from .message import Message, MessageType
from .senders import SenderPolicy
from .task_state import STATE_KEY, TaskLog, TaskState, TaskUpdate, state_of

log = logging.getLogger(__name__)

StatusCallback = Callable[[Message], Awaitable[None] | None]
CancelTask = Callable[[Message, datetime], Awaitable[None]]
"""Publishes the cancel record of a task, kept until its deadline (cancellation.py)."""


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Message]
    on_status: StatusCallback | None
    requester: str
    """The request's sender: a reply must be addressed to it."""
    responder: str | None
    """The agent asked (None: a routed request, answered by whoever a route chose)."""
    log: TaskLog = field(default_factory=TaskLog)
    """Every answer so far, for TaskHandle.state() and updates()."""


class ReplyListener:
    """Consumes a private, exclusive reply queue and resolves waiting requests.

    Args:
        channel: a channel of its own.
        namespace: the namespace (the queue's name prefix).
        owner: the agent id in the queue's name, if any.
        senders: whom each RabbitMQ user may speak for (the replies' ``user_id`` check).
    """

    def __init__(
        self,
        channel: AbstractChannel,
        namespace: str,
        owner: str | None = None,
        *,
        senders: SenderPolicy,
    ) -> None:
        self._channel = channel
        self._namespace = namespace
        self.senders = senders
        # A client-chosen name (not server-named) so that a reconnecting robust channel
        # redeclares the very queue that in-flight requests named as their reply_to.
        # The owner's id in it lets a broker permission grant exactly its reply queues.
        self.queue_name = wire.reply_queue_name(namespace, owner, uuid.uuid4().hex)
        self._queue: AbstractQueue | None = None
        self._pending: dict[str, _Pending] = {}

    async def start(self) -> None:
        """Declare the reply queue, bind it to the replies exchange, start consuming it."""
        self._queue = await self._channel.declare_queue(
            self.queue_name, exclusive=True, auto_delete=True
        )
        # Answers come through {ns}.replies with our name as routing key (a robust
        # channel binds again after a reconnect).
        exchange = wire.reply_exchange_name(self._namespace)
        refused = (
            (ChannelAccessRefused,),
            lambda exc: TopologyError(
                f"not allowed to bind the reply queue {self.queue_name!r} to {exchange!r}:"
                f" give the user the agent permissions of docs/deploy.md: {exc}"
            ),
        )
        with map_exceptions([refused]):
            await self._queue.bind(exchange, self.queue_name)
        await self._consume()
        self._channel.close_callbacks.add(self._on_channel_close)
        if isinstance(self._channel, AbstractRobustChannel):
            # aio-pika declares and binds the queue again after a reconnect; the
            # consumer is ours to start again (it is not aio-pika's: see _consume).
            self._channel.reopen_callbacks.add(self._on_reopened)

    async def _consume(self) -> None:
        # No acks: a reply is only worth anything to this connection's waiters, and an
        # exclusive queue dies with the connection, so there is nothing to redeliver to.
        # Read by the channel's frame switch (_delivery_tap): each reply is settled in
        # the connection reader's turn, without a task or an aio-pika message.
        underlay = await self._channel.get_underlay_channel()
        tag = f"{self.queue_name}.{uuid.uuid4().hex}"
        await FrameSwitch.of(underlay).consume(self.queue_name, tag, self._on_reply, no_ack=True)

    async def _on_reopened(self, *_: object) -> None:
        try:
            await self._consume()
        except Exception as exc:  # the channel went down again: the next reopen retries
            log.warning("could not consume the reply queue %s again: %r", self.queue_name, exc)

    def expect(
        self, request: Message, on_status: StatusCallback | None = None
    ) -> tuple[asyncio.Future[Message], TaskLog]:
        """Register interest in the reply to ``request`` (call before publishing); the
        future of its reply, and the log of its answers."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        pending = _Pending(future, on_status, request.sender, request.recipient or None)
        self._pending[request.id] = pending
        return future, pending.log

    def refusal(self, incoming: Inbound, reply: Message) -> str | None:
        """Why ``reply`` does not answer a request of ours, or None (it does)."""
        pending = self._pending.get(reply.reply_to or "")
        if pending is None:
            return "it answers no request waiting here"
        if pending.responder is not None and reply.sender != pending.responder:
            return f"it is from {reply.sender!r}, the request went to {pending.responder!r}"
        if reply.recipient != pending.requester:
            return f"it is addressed to {reply.recipient!r}, not to {pending.requester!r}"
        return self.senders.refusal(incoming.user_id, reply.sender)

    def forget(self, request_id: str) -> None:
        """Stop waiting for ``request_id`` (timed out or cancelled); a late reply is dropped."""
        self._pending.pop(request_id, None)

    @property
    def in_flight(self) -> int:
        """How many requests are waiting for their reply."""
        return len(self._pending)

    def _on_reply(self, incoming: Inbound) -> Awaitable[None] | None:
        """Take a reply (in the connection reader's turn); an ``on_status`` callback
        that returns an awaitable is handed back to be awaited there."""
        try:
            reply = wire.decode(incoming)
        except InvalidMessageError as exc:
            log.warning("undecodable reply %s ignored: %s", incoming.message_id, exc)
            return None
        if refused := self.refusal(incoming, reply):
            # A late reply (its requester stopped waiting) is routine; anything else
            # is someone else's answer or a forgery.
            late = reply.reply_to not in self._pending
            log.log(
                logging.DEBUG if late else logging.WARNING,
                "reply %s to %s (user_id %r) ignored: %s",
                reply.id,
                reply.reply_to,
                incoming.user_id,
                refused,
            )
            return None
        pending = self._pending[reply.reply_to or ""]
        pending.log.add(reply)
        if reply.type is MessageType.STATUS:
            if pending.on_status is not None:
                return _status_callback(pending.on_status, reply)
            return None
        self._pending.pop(reply.reply_to or "", None)
        if not pending.future.done():
            pending.future.set_result(reply)
        return None

    def _on_channel_close(self, *_: object) -> None:
        # A closed reply channel strands every waiter: fail them now rather than at timeout.
        error = BrokerConnectionError("reply channel closed; the reply may be lost")
        for pending in self._pending.values():
            pending.log.end(TaskState.FAILED)
            if not pending.future.done():
                pending.future.set_exception(error)
                # A TaskHandle nobody awaits any more must not log "exception never
                # retrieved"; a waiter still gets the error.
                pending.future.exception()
        self._pending.clear()


def _status_callback(on_status: StatusCallback, report: Message) -> Awaitable[None] | None:
    """Call ``on_status``; what it raises is logged (now, or when its awaitable is)."""
    try:
        result = on_status(report)
    except Exception:
        log.exception("on_status callback raised")
        return None
    if not inspect.isawaitable(result):
        return None

    async def finish(awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("on_status callback raised")

    return finish(result)


@dataclass(slots=True)
class TaskHandle:
    """A request sent with ``wait_for_result=False``; await :meth:`result` later, follow
    it with :meth:`updates`, ask its :meth:`state`, or :meth:`cancel` it.

    ``deadline``: when its requester stops waiting (a cancel record is kept until then).
    """

    message: Message
    _future: asyncio.Future[Message]
    _timeout_s: float
    _forget: Callable[[], None] = field(repr=False)
    _log: TaskLog = field(default_factory=TaskLog, repr=False)
    _cancel: CancelTask | None = field(default=None, repr=False)
    deadline: datetime | None = None

    @property
    def message_id(self) -> str:
        """The id of the task message (the reply's correlation id)."""
        return self.message.id

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the result's content.

        Raises:
            RequestTimeoutError: nothing arrived within ``timeout`` (default: the task's).
            RemoteError: the handler failed for the last time.
        """
        limit = self._timeout_s if timeout is None else timeout
        try:
            # shield: a timed-out wait leaves the future alone, so result() can be retried.
            async with asyncio.timeout(limit):
                reply = await asyncio.shield(self._future)
        except TimeoutError:
            self._forget()
            raise RequestTimeoutError(
                f"no result for task {self.message.id} from {self.message.recipient!r} "
                f"within {limit}s"
            ) from None
        return content_or_raise(reply)

    async def state(self) -> TaskState:
        """The task's state as its answers so far say (A2A's names, task_state.py)."""
        return self._log.state

    def updates(self) -> AsyncIterator[TaskUpdate]:
        """Every answer in arrival order: status reports, partial results (``chunk``),
        and last the result or error (``final``); each once, from the first, however
        late the iteration starts. Ends after the final one (or once cancelled here, or
        the link to the broker was lost: see :meth:`state`)."""
        return self._log.follow()

    async def cancel(self) -> bool:
        """Cancel the task wherever it is (cancellation.py): queued, it is skipped;
        running, its handler is cancelled. :meth:`result` then raises
        TaskCancelledError. The record is kept in the broker until ``deadline``.

        Returns:
            True, or False when the task had already finished: a no-op (logged).
        """
        if self._log.state.final or self._future.done():
            log.info("task %s already %s: nothing to cancel", self.message.id, self._log.state)
            return False
        assert self._cancel is not None and self.deadline is not None
        await self._cancel(self.message, self.deadline)
        self._forget()
        error = TaskCancelledError(self.message.id, "by its requester")
        self._log.add(cancelled_here(self.message, error))
        if not self._future.done():
            self._future.set_exception(error)
            self._future.exception()  # retrieved: nobody need await result() after this
        return True


def cancelled_here(task: Message, error: TaskCancelledError) -> Message:
    """The ERROR a requester records for a task it cancelled itself (the agent's own
    answer, if it sends one, comes after the requester stopped listening)."""
    content = {"error_type": type(error).__name__, "error_message": str(error), "attempts": 0}
    return Message(
        sender=task.recipient,
        recipient=task.sender,
        type=MessageType.ERROR,
        content=content,
        reply_to=task.id,
        conversation_id=task.conversation_id,
        metadata={STATE_KEY: TaskState.CANCELED.value},
    )


def content_or_raise(reply: Message) -> Any:
    """A reply's content, or the :class:`RemoteError` (:class:`TaskCancelledError`) an
    ERROR reply stands for."""
    if reply.type is MessageType.ERROR:
        content = reply.content if isinstance(reply.content, dict) else {}
        if state_of(reply) is TaskState.CANCELED:
            raise TaskCancelledError(reply.reply_to or "", str(content.get("error_message", "")))
        raise RemoteError(
            str(content.get("error_type", "Error")),
            str(content.get("error_message", reply.content)),
            reply.sender,
        )
    return reply.content


class _Send(Protocol):
    async def __call__(
        self, message: Message, *, reply_to: str | None = ..., deadline: datetime | None = ...
    ) -> None: ...


def task_deadline(timeout_s: float) -> datetime:
    """The deadline a task sent now with ``timeout_s`` carries.

    An agent holds a task at most ``wire.MAX_TASK_DEADLINE_S`` after its timestamp (that
    bound is what lets a starting agent replay only a day of cancels), so a longer
    timeout is refused here rather than expiring silently while the requester waits.

    Raises:
        ConfigError: ``timeout_s`` is not in (0, MAX_TASK_DEADLINE_S].
    """
    if not 0 < timeout_s <= wire.MAX_TASK_DEADLINE_S:
        raise ConfigError(
            f"task timeout {timeout_s:g}s: it must be above 0 and at most "
            f"{wire.MAX_TASK_DEADLINE_S}s (24 h), the longest an agent holds a task"
        )
    return datetime.now(UTC) + timedelta(seconds=timeout_s)


class RpcClient:
    """Sends requests and keeps the reply listener they wait on (started on first use).

    Args:
        open_channel: opens a channel of the connection for the listener.
        send: publishes a message with ``reply_to`` and ``deadline`` (confirmed).
        cancel: publishes a task's cancel record (for :meth:`TaskHandle.cancel`).
        namespace: the namespace.
        owner: the agent id in the reply queue's name, if any.
        senders: whom each RabbitMQ user may speak for (see :class:`ReplyListener`).
    """

    def __init__(
        self,
        open_channel: Callable[[], Awaitable[AbstractChannel]],
        send: _Send,
        namespace: str,
        owner: str | None,
        *,
        senders: SenderPolicy,
        cancel: CancelTask | None = None,
    ) -> None:
        self._open_channel = open_channel
        self._send = send
        self.cancel = cancel
        self._namespace = namespace
        self._owner = owner
        self._senders = senders
        self._listener: ReplyListener | None = None
        self._lock = asyncio.Lock()

    def reset(self) -> None:
        """Forget the listener (its connection closed); the next request starts another."""
        self._listener = None

    async def listener(self) -> ReplyListener:
        """The listener of this connection's private reply queue (started on first use)."""
        if self._listener is not None:
            return self._listener
        async with self._lock:
            if self._listener is None:
                listener = ReplyListener(
                    await self._open_channel(),
                    self._namespace,
                    self._owner,
                    senders=self._senders,
                )
                await listener.start()
                self._listener = listener
            return self._listener

    async def request(
        self, message: Message, *, timeout_s: float, on_status: StatusCallback | None = None
    ) -> TaskHandle:
        """Send ``message`` with our reply queue and a deadline ``timeout_s`` from now.

        The reply is expected before publishing, so even an instant one is not missed;
        if publishing fails, nothing stays pending.

        Raises:
            The errors of the ``send`` given (UnknownRecipientError, ...).
        """
        deadline = task_deadline(timeout_s)
        replies = await self.listener()
        future, answers = replies.expect(message, on_status)
        try:
            with instrumentation.requesting(message, future, timeout_s):
                await self._send(message, reply_to=replies.queue_name, deadline=deadline)
        except BaseException:
            replies.forget(message.id)
            raise
        forget = lambda: replies.forget(message.id)  # noqa: E731
        return TaskHandle(message, future, timeout_s, forget, answers, self.cancel, deadline)
