"""Moving a delivery elsewhere: to the dead letters (``{ns}.dead``) or to a retry queue.

A delivery is moved by publishing a confirmed copy first and acknowledging the original
only then, so that it is never in no queue at all (a crash in between means a
duplicate, never a loss).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from typing import Any

from aio_pika import DeliveryMode
from pamqp import encode
from pamqp.commands import Basic

from . import instrumentation, wire
from .inbound import Inbound
from .publish import Publisher
from .topology import Topology

log = logging.getLogger(__name__)


async def republish(
    publisher: Publisher,
    incoming: Inbound,
    *,
    exchange: str,
    routing_key: str,
    headers: dict[str, Any],
) -> None:
    """Publish a confirmed copy of a delivery (body, properties, headers + ``headers``).

    The copy carries no AMQP expiration: a deadline travels in its header. Its
    ``user_id`` is ours (or none): the broker refuses one that is not this
    connection's user (see :func:`copied_headers` for what else is not copied).

    Raises:
        DeliveryError and subclasses, as :meth:`Publisher.publish`.
    """
    copy = Basic.Properties(
        headers={**copied_headers(incoming.headers), **headers},
        content_type=incoming.content_type,
        delivery_mode=DeliveryMode.PERSISTENT,
        priority=incoming.priority,
        correlation_id=incoming.correlation_id,
        reply_to=incoming.reply_to,
        message_id=incoming.message_id,
        timestamp=incoming.timestamp,
        message_type=incoming.type,
        user_id=publisher.user_id,
    )
    await publisher.publish(exchange, routing_key, incoming.body, copy, incoming.message_id or "?")


async def dead_letter(
    publisher: Publisher,
    incoming: Inbound,
    *,
    reason: str,
    agent_id: str,
    error: BaseException | None = None,
    attempts: int | None = None,
) -> None:
    """Move a delivery to ``{ns}.dead`` with headers saying why, then ack it.

    If the copy cannot be published, the delivery is rejected instead, so the inbox's
    own dead-lettering still keeps it (reason ``rejected``).
    """
    headers = wire.dead_letter_headers(
        incoming, reason=reason, agent_id=agent_id, error=error, attempts=attempts
    )
    try:
        await republish(
            publisher,
            incoming,
            exchange=wire.dead_letter_exchange_name(publisher.namespace),
            routing_key=incoming.routing_key or "",
            headers=headers,
        )
    except Exception:
        log.exception("could not dead-letter %s; rejecting it instead", incoming.message_id)
        await incoming.reject(requeue=False)
        return
    log.warning(
        "dead-lettered message %s for %s: %s%s",
        incoming.message_id,
        agent_id,
        reason,
        f" ({type(error).__name__}: {error})" if error else "",
    )
    instrumentation.dead_lettered(agent_id, incoming)
    await incoming.ack()


async def retry_later(
    publisher: Publisher,
    topology: Topology,
    incoming: Inbound,
    *,
    agent_id: str,
    delay_s: float,
    attempt: int,
) -> None:
    """Park a delivery in the agent's retry queue for ``delay_s``, then ack it.

    The copy goes through the agent's own retry exchange into the retry queue of its
    priority's lane, whose TTL dead-letters it back into that lane (or the classic
    inbox); its ``x-attempt`` header says how many attempts failed.

    Raises:
        DeliveryError and subclasses (the original is then not acknowledged).
    """
    lane = wire.lane_of(incoming.priority)
    retry_queue = await topology.declare_retry_queue(agent_id, delay_s, lane)
    await republish(
        publisher,
        incoming,
        exchange=wire.retry_exchange_name(topology.ns, agent_id),
        routing_key=retry_queue,
        headers={wire.H_ATTEMPT: attempt},
    )
    instrumentation.retried(agent_id, incoming)
    await incoming.ack()


def copied_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """A delivery's headers, fit to be published again by us.

    ``CC`` and ``BCC`` are dropped: kept, they would make the broker copy the message
    into more queues on our authority (a foreign sender's way around its own
    permissions). A value pamqp decoded but cannot encode again (bytes that are not
    UTF-8, a double too large for AMQP's float) is kept as its repr.
    """
    copied: dict[str, Any] = {}
    for key, value in (headers or {}).items():
        if key in ("CC", "BCC"):
            continue
        try:
            encode.encode_table_value(value)
        except (TypeError, ValueError, OverflowError, struct.error):
            value = repr(value)[:1000]
        copied[key] = value
    return copied
