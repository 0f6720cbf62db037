"""Reading the durable message history a namespace keeps in a RabbitMQ stream.

Every message published to the namespace's exchange for a known agent (and every
reply) is also appended to the stream ``{ns}.history``; retention by age and size
keeps it bounded. A query reads the stream from its first retained message.

An AMQP 0.9.1 stream consumer is never told it reached the end, and declare-ok reports
0 messages for a stream. So a query first appends a small marker message and reads
until it sees that marker: everything published before the query is then included,
without guessing with an idle timeout.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from aio_pika import DeliveryMode
from aio_pika import Message as AmqpMessage
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from . import wire
from .errors import InvalidMessageError
from .message import Message

log = logging.getLogger(__name__)

READ_PREFETCH = 500


async def read_history(
    channel: AbstractChannel,
    namespace: str,
    keep: Callable[[Message], bool],
    *,
    timeout_s: float = 30.0,
) -> list[Message]:
    """Return the retained messages for which ``keep`` is true, in publish order.

    Args:
        channel: a channel with publisher confirms, used only for this query.
        namespace: the namespace whose history stream to read.
        keep: the filter applied to each decoded message.
        timeout_s: bound on the whole read.

    Raises:
        TimeoutError: the marker was not reached in time.
    """
    name = wire.history_name(namespace)
    marker = str(uuid.uuid4())
    await channel.set_qos(prefetch_count=READ_PREFETCH)
    queue = await channel.get_queue(name, ensure=False)
    await channel.default_exchange.publish(
        AmqpMessage(
            b"null",
            headers={wire.H_HISTORY_MARKER: marker},
            content_type=wire.CONTENT_TYPE,
            delivery_mode=DeliveryMode.PERSISTENT,
        ),
        routing_key=name,
        timeout=timeout_s,
    )
    found: list[Message] = []
    done = asyncio.get_running_loop().create_future()

    async def on_message(incoming: AbstractIncomingMessage) -> None:
        await incoming.ack()
        if done.done():
            return
        headers = incoming.headers or {}
        if wire.H_HISTORY_MARKER in headers:
            if wire.header_text(headers[wire.H_HISTORY_MARKER]) == marker:
                done.set_result(None)
            return
        try:
            message = wire.decode(incoming)
        except InvalidMessageError as exc:
            log.debug("history: skipping undecodable entry: %s", exc)
            return
        if keep(message):
            found.append(message)

    tag = await queue.consume(on_message, arguments={"x-stream-offset": "first"})
    try:
        await asyncio.wait_for(done, timeout_s)
    finally:
        await queue.cancel(tag)
    return found
