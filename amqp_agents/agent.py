"""MessagePassingAgent: handlers for an inbox: dispatch by message type, reply, retry,
and the consumer's lifecycle.

The life of one delivery (``_on_delivery -> _handle_delivery``)::

    admit (admission.py: decode, address, sender, routes, deadline, reply_to,
      │    duplicate) ── refused ──────────────────────> {ns}.dead or ack, unhandled
      │
    handler(message) ── returns ──> reply (if any) ─────> ack
      │
      raises ── attempts left ──> {ns}.retry.<agent>.<delay> ──(TTL)──> inbox, ack
             │                    (via the agent's own exchange {ns}.retry.<agent>)
             └─ last attempt ───> ERROR reply + {ns}.dead with error headers, ack

A delivery is acknowledged only after all of this finished, so a crash at any point
means redelivery (at-least-once). At most ``concurrency`` handlers run at once. A
classic inbox is one consumer with that prefetch, the rest wait in the broker, where
priority orders them; a quorum inbox is a consumer per lane, each with that prefetch,
and of what the agent holds the most urgent starts first (:mod:`amqp_agents.slots`).

The consumer outlives faults (``_on_channel_reopened``, ``_on_consumer_cancelled ->
_resume_consuming``): aio-pika reopens the channel after a reconnect or after the
broker closed it (a consumer timeout), and the agent then consumes again; when the
broker cancels the consumer because the inbox was deleted, the agent declares the
inbox again first. While its queues are unavailable (a node down, a leader being
elected: QueueUnavailableError) it retries with backoff and consumes again when they
are back. If they cannot be declared at all (passive mode, a conflicting queue) the
agent stops and :meth:`MessagePassingAgent.start` raises: never a silent zero-consumer
state.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aio_pika.abc import AbstractChannel, AbstractRobustChannel
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelNotFoundEntity
from pydantic import BaseModel

from . import instrumentation, wire
from .admission import Admit, RecentIds, Skip
from .cancellation import CancelWatch
from .cards import AgentCard, announce
from .client import BrokerClient
from .declaring import Outage
from .default_handlers import DefaultHandlers, Handler
from .errors import AgentsError, HandlerError, QueueUnavailableError, TopologyError
from .inbound import Inbound
from .lanes import LaneConsumers, PrioritySlots
from .message import (
    Message,
    MessagePriority,
    MessageType,
    create_task_message,
    validate_agent_id,
)
from .outcomes import ack_handled, cancelled, handler_failed, result_reply, send_reply
from .payloads import typed
from .progress import Handling
from .retry import RetryPolicy
from .rpc import StatusCallback
from .task_state import STATE_KEY, TaskState
from .topology import is_temporary

_H = TypeVar("_H", bound=Callable[..., Awaitable[Any]])

log = logging.getLogger(__name__)


_current: contextvars.ContextVar[Handling] = contextvars.ContextVar("amqp_agents_current")


class MessagePassingAgent(DefaultHandlers):
    """An agent that consumes its inbox and answers by message type.

    Override ``_process_task`` / ``_process_request`` (or ``_handle_*``) in a subclass,
    or register handlers with :meth:`on`. A handler's return value becomes the reply.

    Args:
        agent_id: the agent's id; its inbox is ``{ns}.inbox.{agent_id}``.
        message_queue: a connected :class:`MessageQueue`.
        llm_client: an OpenAI-compatible async client used by the default
            ``_process_task`` (``llm_client.chat.completions.create``).
        model: the model name passed to the LLM client.
        concurrency: handlers running at once (the consumer's prefetch).
        retry: the retry policy for failing handlers.
        drain_timeout_s: how long :meth:`stop` lets running handlers finish.
        dedup_window: remember this many handled message ids and skip redelivered
            duplicates (0 = off).
        card: what the agent says of itself (cards.py): published when it starts, its
            skills filled in from the handlers; marked gone when it stops.
    """

    def __init__(
        self,
        agent_id: str,
        message_queue: BrokerClient,
        llm_client: Any = None,
        *,
        model: str = "gpt-4o-mini",
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        drain_timeout_s: float = 30.0,
        dedup_window: int = 0,
        card: AgentCard | None = None,
    ) -> None:
        self.id = validate_agent_id(agent_id)
        self.queue = message_queue
        self.llm = llm_client
        self.model = model
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.drain_timeout_s = drain_timeout_s
        self.dedup_window = dedup_window
        self.handlers: dict[MessageType, Handler] = {}
        self.running = False
        self._seen = RecentIds(dedup_window)
        self._handling: dict[str, asyncio.Future[None]] = {}  # message id -> its end
        self._in_flight: set[asyncio.Task[None]] = set()
        self._channel: AbstractChannel | None = None
        self._consumers: LaneConsumers | None = None
        self._slots = PrioritySlots(concurrency)
        self._taking = False  # deliveries start handlers (until stop() begins)
        self._outage = Outage(f"agent {self.id}'s inbox")
        self._stopped = asyncio.Event()
        self._resume_lock = asyncio.Lock()
        self._resuming: set[asyncio.Task[None]] = set()
        self._inbox_lost = False
        self.card = card or AgentCard()
        self._cancels = CancelWatch(self.id, message_queue.senders)
        self.error: BaseException | None = None
        """Why the agent stopped on its own (its inbox could not be consumed), if it did."""
        self._setup_handlers()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    # -- handlers ---------------------------------------------------------------------

    def on(
        self, msg_type: MessageType, *, model: type[BaseModel] | None = None
    ) -> Callable[[_H], _H]:
        """Decorator registering a handler for ``msg_type`` without subclassing.

        With ``model`` (or a handler whose parameter is annotated with a pydantic
        model) the handler gets the content validated into it (:mod:`payloads`).

        >>> @agent.on(MessageType.REQUEST)          # doctest: +SKIP
        ... async def answer(message): return {"echo": message.content}
        """

        def register(handler: _H) -> _H:
            self.handlers[msg_type] = typed(handler, model)
            return handler

        return register

    # -- sending ----------------------------------------------------------------------

    async def send_message(
        self,
        recipient: str,
        content: Any,
        msg_type: MessageType = MessageType.NOTIFICATION,
        priority: MessagePriority = MessagePriority.NORMAL,
    ) -> Message:
        """Send a message from this agent; returns it once the broker confirmed it."""
        message = Message(
            sender=self.id, recipient=recipient, type=msg_type, priority=priority, content=content
        )
        await self.queue.send(message)
        return message

    async def send_task(
        self,
        recipient: str,
        task_description: str,
        context: dict[str, Any] | None = None,
        wait_for_result: bool = True,
        timeout: float = 30.0,
        priority: MessagePriority = MessagePriority.NORMAL,
        on_status: StatusCallback | None = None,
        conversation_id: str | None = None,
    ) -> Any:
        """Send a task; wait for its result (or return a :class:`TaskHandle`).

        Many tasks may be in flight at once; waiting never takes other messages from
        this agent's inbox. The task carries its deadline: an agent that picks it up
        too late dead-letters it as expired instead of working for nobody.

        Args:
            on_status: called with each STATUS message the handler reports.
            conversation_id: join this conversation instead of starting a new one
                (inside a handler, the handled message's conversation is the default).

        Returns:
            the result's content, or a TaskHandle when ``wait_for_result`` is False.

        Raises:
            RequestTimeoutError: no result within ``timeout`` seconds.
            RemoteError: the recipient's handler failed for the last time.
            UnknownRecipientError: the recipient has no inbox.
            ConfigError: ``timeout`` is not in (0, 24 h] (wire.MAX_TASK_DEADLINE_S).
        """
        message = create_task_message(self.id, recipient, task_description, context, priority)
        # A sub-task sent from inside a handler continues that conversation.
        if conversation_id is not None:
            message.conversation_id = conversation_id
        elif (current := _current.get(None)) is not None:
            message.conversation_id = current.message.conversation_id or message.conversation_id
        handle = await self.queue.request(message, timeout_s=timeout, on_status=on_status)
        if not wait_for_result:
            return handle
        return await handle.result()

    async def send_status(self, content: Any, *, state: TaskState | None = None) -> None:
        """From inside a handler: report progress on the message being handled.

        The requester receives it through ``on_status`` and ``TaskHandle.updates()``;
        ``state`` (e.g. ``TaskState.INPUT_REQUIRED``) names the state it means.
        """
        await self._handling_now().report(content, {STATE_KEY: state.value} if state else {})

    async def send_chunk(self, content: Any) -> None:
        """From inside a handler: send the next partial result (LLM tokens, a paragraph);
        ``TaskHandle.updates()`` yields them in order before the result."""
        await self._handling_now().chunk(content)

    def _handling_now(self) -> Handling:
        if (current := _current.get(None)) is None:
            raise HandlerError("send_status()/send_chunk() only work inside a handler")
        return current

    # -- consuming --------------------------------------------------------------------

    async def start(self) -> None:
        """Consume the inbox until :meth:`stop` is called.

        Raises:
            TopologyError: the inbox was deleted and could not be declared again (see
                :attr:`error`); the agent has stopped.
            BrokerConnectionError: the broker kept refusing the connection's
                credentials (a deleted user, a revoked vhost) and it stopped
                reconnecting (``MessageQueue.wait_failed``); the agent has stopped.
        """
        await self.start_consuming()
        stopped = asyncio.ensure_future(self._stopped.wait())
        failed = asyncio.ensure_future(self.queue.wait_failed())
        try:
            done, _ = await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            failed.cancel()
        if failed in done and stopped not in done:
            await self._fail(failed.result())
        if self.error is not None:
            raise self.error

    async def start_consuming(self) -> None:
        """Declare the inbox if needed and start consuming it; returns at once."""
        if self.running:
            return
        await self.queue.ensure_inbox(self.id)
        self._stopped.clear()
        self.error = None
        await self._cancels.start(self.queue)  # first: a cancelled task skips on arrival
        await announce(self.queue, self.card, self.id, self.handlers)  # before any handler
        self._channel = await self.queue.channel(prefetch=self.concurrency)
        names = self.queue.inbox_queue_names(self.id)
        lanes = [await self._channel.get_queue(name, ensure=False) for name in names]
        self._consumers = LaneConsumers(
            self._channel, lanes, self.concurrency, self._on_delivery, self._on_consumer_cancelled
        )
        self._taking = True
        await self._consumers.consume()
        self.running = True
        self._channel.close_callbacks.add(self._on_channel_closed)
        if isinstance(self._channel, AbstractRobustChannel):
            self._channel.reopen_callbacks.add(self._on_channel_reopened)
        log.info("agent %s consuming %s (concurrency %d)", self.id, names, self.concurrency)

    @property
    def consuming(self) -> bool:
        """Whether the inbox is being consumed right now (what ``/readyz`` asks)."""
        channel, lost = self._channel, self._inbox_lost or self._outage.since is not None
        return self.running and channel is not None and not channel.is_closed and not lost

    def _on_channel_closed(self, _sender: object, exc: BaseException | None = None) -> None:
        if not self.running:
            return
        # A closed channel cancels the handlers running on it: their deliveries can no
        # longer be acknowledged, and the broker redelivers them (e.g. a consumer
        # timeout: 406 PRECONDITION_FAILED "delivery acknowledgement timed out").
        for task in self._in_flight:
            task.cancel()
        log.warning(
            "%s: consumer channel closed (%s); %d running handlers cancelled, their "
            "messages will be redelivered; consuming again once the channel is back",
            self.id,
            exc,
            len(self._in_flight),
        )

    def _on_channel_reopened(self, _sender: object) -> None:
        if self.running:
            self._resume_consuming()

    def _on_consumer_cancelled(self, frame: Any) -> None:
        assert self._consumers is not None
        if not self.running or not self._consumers.owns(getattr(frame, "consumer_tag", None)):
            return
        log.warning(
            "%s: the broker cancelled the consumer of its inbox (deleted?); declaring it again",
            self.id,
        )
        self._inbox_lost = True
        self._resume_consuming()

    def _resume_consuming(self) -> None:
        # Called from aio-pika's callbacks, which must not block: resume in a task.
        task = asyncio.create_task(self._resume())
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    async def _resume(self) -> None:
        """Consume again after a fault; wait out an unavailable inbox, retry while the
        channel stays open, fail loudly if the inbox cannot be declared again."""
        async with self._resume_lock:
            while self.running:
                assert self._channel is not None and self._consumers is not None
                try:
                    if self._inbox_lost:
                        await self.queue.restore_inbox(self.id)
                        self._inbox_lost = False
                    await self._consumers.consume()
                    self._outage.over()
                    log.info("%s: consuming its inbox again", self.id)
                    return
                except QueueUnavailableError as exc:
                    self._outage.note(exc)
                except TopologyError as exc:
                    await self._fail(exc)
                    return
                except Exception as exc:
                    if is_temporary(exc):  # basic.consume on a queue that is down
                        self._outage.note(exc)
                    elif isinstance(exc, ChannelNotFoundEntity):  # it is gone
                        if self.queue.passive:
                            await self._fail(TopologyError(f"inbox of {self.id!r} is gone: {exc}"))
                            return
                        self._inbox_lost = True
                    elif not self._channel.is_closed:
                        log.warning(
                            "%s: cannot consume its inbox yet (%s: %s); retrying",
                            self.id,
                            type(exc).__name__,
                            exc,
                        )
                if self._channel.is_closed and self._outage.since is None:
                    return  # reopening the channel calls _resume again
                await self._outage.pause()
                if self._channel.is_closed:
                    return  # reopening the channel calls _resume again (after the pause)

    async def _fail(self, error: BaseException) -> None:
        log.error("%s: stopping, its inbox cannot be consumed: %s", self.id, error)
        self.error = error
        await self.stop()

    async def stop(self) -> None:
        """Stop gracefully: take no new deliveries, let running handlers finish.

        Handlers still running after ``drain_timeout_s`` are cancelled; their
        deliveries are not acknowledged, so the broker puts them back in the inbox.
        """
        if not self.running:
            self._stopped.set()
            return
        self.running = self._taking = False
        assert self._channel is not None and self._consumers is not None
        for task in self._resuming - {asyncio.current_task()}:
            task.cancel()
        await self._consumers.cancel()
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=self.drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "%s: %d handlers cancelled at stop; their messages return to the inbox",
                    self.id,
                    len(pending),
                )
                await asyncio.wait(pending)
        # Close even a channel that is down: a robust channel left open-ended would be
        # reopened (consumer-less) by the next reconnect.
        with contextlib.suppress(*CONNECTION_EXCEPTIONS):
            await self._channel.close()
        await self._cancels.stop()
        await announce(self.queue, self.card, self.id, {}, gone=True)
        self._stopped.set()
        log.info("agent %s stopped", self.id)

    async def _on_delivery(self, incoming: Inbound) -> None:
        # Each delivery runs in a task of its own (lanes.py starts it); the slots bound how
        # many run at once and start the most urgent first. That task is the one stop()
        # waits for (and cancels, if it must); one not started is left unacknowledged.
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - lanes.py always calls us in a task
            await self._handle_delivery(incoming)
            return
        self._in_flight.add(task)
        try:
            async with self._slots.hold(wire.effective_priority(incoming.priority)):
                # Not started once stop() began, nor on a channel that closed while it
                # waited: it could not be acknowledged, and the broker redelivers it.
                if self._taking and not incoming.channel.is_closed:
                    await self._handle_delivery(incoming)
        except (AgentsError, *CONNECTION_EXCEPTIONS) as exc:
            # Acknowledging it, or moving it to a retry queue or the dead letters, failed
            # (connection lost, broker blocked). Give it back; on a channel that is gone
            # the broker does that by itself. Either way it is redelivered (and skipped
            # by the dedup window, if on, when its handler had finished).
            log.warning(
                "%s: message %s not acknowledged (%s: %s); it will be redelivered",
                self.id,
                incoming.message_id,
                type(exc).__name__,
                exc,
            )
            with contextlib.suppress(Exception):
                await incoming.nack(requeue=True)
        finally:
            self._in_flight.discard(task)

    async def _handle_delivery(self, incoming: Inbound) -> None:
        if (running := self._handling.get(incoming.message_id or "")) is not None:
            # Sent again or redelivered while a copy is handled here: wait for that copy
            # (handled: this one is a duplicate; failed or cancelled: this one runs).
            log.debug("%s: message %s in hand already; waiting", self.id, incoming.message_id)
            await asyncio.shield(running)
        verdict = await self.queue.admit(incoming, self.id, handling=True, seen=self._seen)
        if not isinstance(verdict, Admit):
            if isinstance(verdict, Skip):
                level = logging.INFO if verdict.duplicate else logging.DEBUG
                log.log(level, "%s: %s skipped", self.id, verdict.reason)
            return  # dead-lettered or acknowledged
        done = self._handling.setdefault(verdict.message.id, asyncio.Future())
        try:
            with instrumentation.handling(self.id, incoming, verdict.message):
                await self._run_handler(incoming, verdict.message)
        finally:
            if self._handling.get(verdict.message.id) is done:
                del self._handling[verdict.message.id]
                done.set_result(None)

    async def _run_handler(self, incoming: Inbound, message: Message) -> None:
        handler = self.handlers.get(message.type)
        if handler is None:
            log.warning(
                "%s: no handler for %s message %s from %s; acknowledged",
                self.id,
                message.type.value,
                message.id,
                message.sender,
            )
            await incoming.ack()
            return
        if self._cancels.cancels(message):  # cancelled while it waited in the inbox
            await cancelled(self.queue, incoming, message, "before it started", agent_id=self.id)
            return
        handling = Handling(self.id, self.queue, message, incoming.reply_to)
        token = _current.set(handling)
        handling.announce_working()
        try:
            with self._cancels.running(message):
                result = await handler(message)
        except asyncio.CancelledError:
            if not self._cancels.interrupted(message):
                raise
            await cancelled(self.queue, incoming, message, "while it ran", agent_id=self.id)
            return
        except Exception as exc:
            await handler_failed(self.queue, self.retry, incoming, message, exc, agent_id=self.id)
            return
        finally:
            handling.done()
            _current.reset(token)
        if (reply := result_reply(self.id, message, result)) is not None:
            await send_reply(self.queue, reply, incoming.reply_to)
        self._seen.add(message.id)
        await ack_handled(incoming)
