"""What a handler's outcome does: a result becomes a reply, a failure a retry or, at the
last attempt (or a HandlerError), an ERROR reply and a dead letter; then the ack.

A TASK always gets a RESULT and a REQUEST a RESPONSE (its requester may be waiting),
even when the handler returned None; a handler's last failure becomes an ERROR reply
for them. Any other message gets a RESPONSE only if the handler returned something.
Replies go where the request said (AMQP ``reply_to``), else to the sender's inbox.
"""

from __future__ import annotations

import logging
from typing import Any

from . import instrumentation, wire
from .client import BrokerClient
from .errors import (
    AgentsError,
    HandlerError,
    PayloadError,
    TaskCancelledError,
    UnknownRecipientError,
)
from .inbound import Inbound
from .message import Message, MessageType
from .retry import RetryPolicy
from .task_state import STATE_KEY, TaskState

log = logging.getLogger("amqp_agents.agent")
"""The agent's log: what an agent did with a message is filtered by this one name."""

REPLY_TYPES = {
    MessageType.TASK: MessageType.RESULT,
    MessageType.REQUEST: MessageType.RESPONSE,
}
"""Requests that always get a reply (their requester may be waiting), and its type."""


def answer(sender: str, message: Message, msg_type: MessageType, content: Any) -> Message:
    """A reply from ``sender`` to ``message``: same priority and conversation."""
    return Message(
        sender=sender,
        recipient=message.sender,
        type=msg_type,
        priority=message.priority,
        content=content,
        reply_to=message.id,
        conversation_id=message.conversation_id,
    )


def result_reply(sender: str, message: Message, result: Any) -> Message | None:
    """The reply a handler's return value becomes (a Message is sent as it is), or None."""
    if isinstance(result, Message):
        return result
    if message.type in REPLY_TYPES:
        return answer(sender, message, REPLY_TYPES[message.type], result)
    if result is not None:
        return answer(sender, message, MessageType.RESPONSE, result)
    return None


def error_reply(
    sender: str,
    message: Message,
    error: Exception,
    attempts: int,
    state: TaskState = TaskState.FAILED,
) -> Message | None:
    """The ERROR reply for a handler's last failure on a request (or for a request
    refused or cancelled: ``state``), or None (no request)."""
    if message.type not in REPLY_TYPES:
        return None
    content = {
        "error_type": type(error).__name__,
        "error_message": str(error),
        "attempts": attempts,
    }
    reply = answer(sender, message, MessageType.ERROR, content)
    if state is not TaskState.FAILED:
        reply.metadata[STATE_KEY] = state.value
    return reply


async def refuse(
    client: BrokerClient,
    incoming: Inbound,
    message: Message,
    error: Exception,
    state: TaskState,
    *,
    agent_id: str,
) -> None:
    """End a delivery that is not to be handled (cancelled, or a payload that does not
    fit): its requester gets the ERROR reply with ``state``, then the ack. Neither a
    retry nor a dead letter: nothing crashed."""
    log.info("%s: %s %s: %s", agent_id, state.value, message.id, error)
    if reply := error_reply(agent_id, message, error, wire.attempt_of(incoming.headers), state):
        await send_reply(client, reply, incoming.reply_to)
    await ack_handled(incoming)


async def send_reply(client: BrokerClient, reply: Message, reply_address: str | None) -> None:
    """Send ``reply`` to ``reply_address`` if given, else to its recipient's inbox.

    A reply that cannot be delivered is logged, not raised: the request was handled,
    and its requester's timeout tells it the rest.
    """
    if reply_address:
        try:
            await client.send_to_queue(reply, reply_address)
        except AgentsError as exc:
            log.warning(
                "%s: reply %s to %s not delivered: %s", reply.sender, reply.id, reply_address, exc
            )
        return
    if not reply.recipient:
        log.warning(
            "%s: reply %s has nowhere to go (no sender, no reply_to)", reply.sender, reply.id
        )
        return
    try:
        await client.send(reply)
    except UnknownRecipientError:
        log.warning(
            "%s: reply %s not delivered: %s has no inbox", reply.sender, reply.id, reply.recipient
        )


async def cancelled(
    client: BrokerClient,
    incoming: Inbound,
    message: Message,
    when: str,
    *,
    agent_id: str,
) -> None:
    """End a cancelled task (``when``: "before it started", "while it ran")."""
    error = TaskCancelledError(message.id, when)
    await refuse(client, incoming, message, error, TaskState.CANCELED, agent_id=agent_id)


async def handler_failed(
    client: BrokerClient,
    retry: RetryPolicy,
    incoming: Inbound,
    message: Message,
    error: Exception,
    *,
    agent_id: str,
) -> None:
    """Retry a failed delivery later while ``retry`` allows and ``error`` is not a
    :class:`HandlerError`; else send the ERROR reply and dead-letter it."""
    if isinstance(error, PayloadError):
        await refuse(client, incoming, message, error, TaskState.REJECTED, agent_id=agent_id)
        return
    instrumentation.failed(error)
    attempt = wire.attempt_of(incoming.headers) + 1
    permanent = isinstance(error, HandlerError)
    if not permanent and attempt < retry.max_attempts:
        delay = retry.delay_before(attempt + 1)
        log.warning(
            "%s: handler failed on %s (attempt %d/%d, retry in %.1fs): %s: %s",
            agent_id,
            message.id,
            attempt,
            retry.max_attempts,
            delay,
            type(error).__name__,
            error,
        )
        await client.retry_later(incoming, agent_id=agent_id, delay_s=delay, attempt=attempt)
        return
    if (reply := error_reply(agent_id, message, error, attempt)) is not None:
        await send_reply(client, reply, incoming.reply_to)
    await client.dead_letter(
        incoming, reason="handler failed", agent_id=agent_id, error=error, attempts=attempt
    )


async def ack_handled(incoming: Inbound) -> None:
    """Acknowledge a handled delivery: queue the ack frame, without waiting for the socket.

    aio-pika's ``ack()`` also waits until the writer has put the frame on the socket,
    which costs every delivery a future and a trip through the event loop; the broker
    learns of the ack no sooner for it. The connection's bounded write queue still
    holds us back when the socket is slow, and an ack lost with the link means a
    redelivery, as with any ack in flight (at least once).
    """
    if incoming.delivery_tag is None:  # pragma: no cover - consumed deliveries have one
        await incoming.ack()
        return
    await incoming.channel.basic_ack(incoming.delivery_tag, wait=False)
