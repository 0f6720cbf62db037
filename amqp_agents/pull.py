"""Reading an inbox without an agent: pull ``receive``, ``receive_all``, and taps.

Every delivery passes :func:`amqp_agents.admission.admit` first, as it does for an
agent; a tap only looks, so what admission refuses is skipped there, not moved.
``receive`` and ``receive_all`` read every queue of the inbox (its lanes, in quorum
mode), highest priority first.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from . import wire
from .admission import Admit, Gate, Skip, Verdict, admit
from .message import Message
from .routing import MessageRouter

if TYPE_CHECKING:
    from .client import BrokerClient

log = logging.getLogger(__name__)

Callback = Callable[[Message], Awaitable[None] | None]


class Subscription:
    """A tap on an agent's traffic; :meth:`cancel` removes it."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, tag: str) -> None:
        self._channel = channel
        self._queue = queue
        self._tag = tag

    async def cancel(self) -> None:
        """Stop the tap and delete its private queue."""
        if not self._channel.is_closed:
            await self._queue.cancel(self._tag)
            await self._channel.close()


async def receive(client: BrokerClient, agent_id: str, timeout: float | None) -> Message | None:
    """Take the next admitted message from the agent's inbox (see ``BrokerClient.receive``)."""
    await client.ensure_inbox(agent_id)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    channel = await client.channel(prefetch=1)
    try:
        queues = await _inbox_queues(client, channel, agent_id)
        while True:
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            incoming = await _take_one(queues, remaining)
            if incoming is None:
                return None
            verdict = await client.admit(incoming, agent_id)
            if isinstance(verdict, Admit):
                await incoming.ack()
                return verdict.message
            _log_refused(agent_id, verdict)  # and keep waiting
    finally:
        await channel.close()


async def receive_all(client: BrokerClient, agent_id: str) -> list[Message]:
    """Take every admitted message waiting in the agent's inbox, highest priority first."""
    await client.ensure_inbox(agent_id)
    channel = await client.channel()
    messages: list[Message] = []
    try:
        for queue in await _inbox_queues(client, channel, agent_id):
            while (incoming := await queue.get(no_ack=False, fail=False)) is not None:
                verdict = await client.admit(incoming, agent_id)
                if isinstance(verdict, Admit):
                    await incoming.ack()
                    messages.append(verdict.message)
                else:
                    _log_refused(agent_id, verdict)
    finally:
        await channel.close()
    # A lane holds two priorities in arrival order; a stable sort orders them.
    messages.sort(key=lambda message: -message.priority)
    return messages


async def _inbox_queues(
    client: BrokerClient, channel: AbstractChannel, agent_id: str
) -> list[AbstractQueue]:
    names = client.inbox_queue_names(agent_id)
    return [await channel.get_queue(name, ensure=False) for name in names]


async def subscribe(client: BrokerClient, agent_id: str, callback: Callback) -> Subscription:
    """Tap the agent's traffic as its inbox gets it (see ``BrokerClient.subscribe``)."""
    await client.ensure_inbox(agent_id)
    channel = await client.channel(prefetch=100)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    for key in tap_binding_keys(client.router, agent_id):
        await queue.bind(wire.exchange_name(client.namespace), key)
    gate = Gate(client.namespace, agent_id, client.senders, router=client.router)

    async def on_message(incoming: AbstractIncomingMessage) -> None:
        async with incoming.process(ignore_processed=True):
            verdict = admit(incoming, gate)
            if isinstance(verdict, Skip):
                return  # a route's filter refused it: the agent skips it too
            if not isinstance(verdict, Admit):
                log.warning("tap on %s: message skipped: %s", agent_id, verdict.reason)
                return
            try:
                result = callback(verdict.message)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("tap callback for %s raised", agent_id)

    tag = await queue.consume(on_message)
    return Subscription(channel, queue, tag)


def tap_binding_keys(router: MessageRouter | None, agent_id: str) -> list[str]:
    """The keys that put a message into ``agent_id``'s inbox: its own and its routes'."""
    routed = () if router is None else (k for k, dest in router.bindings() if dest == agent_id)
    return [wire.inbox_binding_key(agent_id), *dict.fromkeys(routed)]


def _log_refused(agent_id: str, verdict: Verdict) -> None:
    if isinstance(verdict, Skip):
        log.debug("%s: acknowledged unhandled: %s", agent_id, verdict.reason)


async def _take_one(
    queues: list[AbstractQueue], timeout: float | None
) -> AbstractIncomingMessage | None:
    """Exactly one delivery, from the highest queue that has one; else the first to
    arrive on any (prefetch 1 each), cancelling the consumers before it is acked."""
    for queue in queues:
        if (waiting := await queue.get(no_ack=False, fail=False)) is not None:
            return waiting
    got: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()

    async def on_message(incoming: AbstractIncomingMessage) -> None:
        if got.done():
            await incoming.nack(requeue=True)
        else:
            got.set_result(incoming)

    tags = [(queue, await queue.consume(on_message)) for queue in queues]
    try:
        return await asyncio.wait_for(got, timeout)
    except TimeoutError:
        return None
    finally:
        for queue, tag in tags:
            await queue.cancel(tag)
