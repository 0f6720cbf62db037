"""The reply path of requests: one private reply queue per MessageQueue.

Requests carry ``reply_to`` = this queue's name, which is bound to ``{ns}.replies`` with
that name as key; replies (and STATUS progress reports) come back through that exchange
with ``correlation_id`` = the request's id and resolve a future kept here,
as in aio-pika's RPC pattern. Replies never pass through an agent's inbox, so waiting
for one never takes, delays or drops any other message addressed to the agent, and a
handler that waits for a sub-task cannot deadlock the inbox's prefetch window.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelAccessRefused

from . import wire
from .errors import BrokerConnectionError, InvalidMessageError, TopologyError
from .message import Message, MessageType

log = logging.getLogger(__name__)

StatusCallback = Callable[[Message], Awaitable[None] | None]


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Message]
    on_status: StatusCallback | None
    responder: str | None = None


class ReplyListener:
    """Consumes a private, exclusive reply queue and resolves waiting requests.

    Args:
        channel: a channel of its own.
        namespace: the namespace (the queue's name prefix).
        owner: the agent id in the queue's name, if any.
        authenticate: take only replies whose RabbitMQ-validated ``user_id`` is their
            sender (``MessageQueue(authenticate_senders=True)``): anyone who may write
            to the replies exchange (every agent) or the default exchange can put a
            message into this queue.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        namespace: str,
        owner: str | None = None,
        *,
        authenticate: bool = False,
    ) -> None:
        self._channel = channel
        self._namespace = namespace
        self.authenticate = authenticate
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
        try:
            await self._queue.bind(exchange, self.queue_name)
        except ChannelAccessRefused as exc:
            raise TopologyError(
                f"not allowed to bind the reply queue {self.queue_name!r} to {exchange!r}:"
                f" give the user the agent permissions of docs/deploy.md: {exc}"
            ) from None
        # No acks: a reply is only worth anything to this connection's waiters, and an
        # exclusive queue dies with the connection, so there is nothing to redeliver to.
        await self._queue.consume(self._on_reply, no_ack=True)
        self._channel.close_callbacks.add(self._on_channel_close)

    def expect(
        self,
        request_id: str,
        on_status: StatusCallback | None = None,
        responder: str | None = None,
    ) -> asyncio.Future[Message]:
        """Register interest in the reply to ``request_id`` (call before publishing).

        With ``authenticate`` on, only a reply whose validated ``user_id`` is its
        sender, and that sender ``responder`` (the agent asked), is taken.
        """
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future, on_status, responder)
        return future

    def forget(self, request_id: str) -> None:
        """Stop waiting for ``request_id`` (timed out or cancelled); a late reply is dropped."""
        self._pending.pop(request_id, None)

    @property
    def in_flight(self) -> int:
        """How many requests are waiting for their reply."""
        return len(self._pending)

    async def _on_reply(self, incoming: AbstractIncomingMessage) -> None:
        try:
            reply = wire.decode(incoming)
        except InvalidMessageError as exc:
            log.warning("undecodable reply %s ignored: %s", incoming.message_id, exc)
            return
        pending = self._pending.get(reply.reply_to or "")
        if pending is None:
            log.debug(
                "reply %s to %s arrived after its requester stopped waiting",
                reply.id,
                reply.reply_to,
            )
            return
        if self.authenticate and not (
            incoming.user_id == reply.sender and pending.responder in (None, reply.sender)
        ):
            log.warning(
                "reply %s to %s ignored: user_id %r, sender %r, asked %r",
                reply.id,
                reply.reply_to,
                incoming.user_id,
                reply.sender,
                pending.responder,
            )
            return
        if reply.type is MessageType.STATUS:
            if pending.on_status is not None:
                try:
                    result = pending.on_status(reply)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("on_status callback raised")
            return
        self._pending.pop(reply.reply_to or "", None)
        if not pending.future.done():
            pending.future.set_result(reply)

    def _on_channel_close(self, *_: object) -> None:
        # A closed reply channel strands every waiter: fail them now rather than at timeout.
        error = BrokerConnectionError("reply channel closed; the reply may be lost")
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
                # A TaskHandle nobody awaits any more must not log "exception never
                # retrieved"; a waiter still gets the error.
                pending.future.exception()
        self._pending.clear()
