"""Message <-> AMQP: what a :class:`~amqp_agents.message.Message` looks like on the wire.

The only place that maps the envelope to a routing key, AMQP properties, headers
and a JSON body (:func:`encode`) and reads it back from any client's delivery
(:func:`decode`); docs/wire-format.md and the golden vectors in docs/wire-vectors/
describe the same mapping for other languages. Pure: it builds plain values and
reads any object that has the AMQP properties of a delivery (an aio-pika
``IncomingMessage`` does).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic_core import from_json

from amqp_agents.errors import InvalidMessageError, MessageTooLargeError
from amqp_agents.message import Message, MessagePriority, MessageType

from .headers import (
    CONTENT_TYPE,
    H_CONVERSATION,
    H_DEADLINE_US,
    H_METADATA,
    H_RECIPIENT,
    H_SENDER,
    H_TIMESTAMP_US,
    from_us,
    header_str,
    to_us,
)
from .names import INBOX_MAX_PRIORITY, NO_AGENT, routing_key

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
"""Headers travel in one AMQP frame (frame_max defaults to 128 KiB); the broker closes
the connection on a larger one, so we refuse it first."""
MAX_ID_BYTES = 255
"""Message ids, ``reply_to`` and conversation ids: an AMQP short string's limit (the
conversation id is a header, held to the same limit so no id can swell the frame)."""
_SHORT_CHARS = MAX_ID_BYTES // 4
"""Up to this many characters a string is within MAX_ID_BYTES whatever they are."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message ready to publish: routing key, body and AMQP properties."""

    routing_key: str
    body: bytes
    headers: dict[str, Any]
    message_id: str
    type: str
    priority: int
    timestamp: datetime
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration_s: float | None = None

    @property
    def expiration(self) -> str | None:
        """The AMQP ``expiration`` property: whole milliseconds as text, or None."""
        return None if self.expiration_s is None else str(int(self.expiration_s * 1000))


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Compact UTF-8 JSON, the encoder made once (``json.dumps`` with options makes one per call)."""


def _dumps(value: Any) -> bytes:
    return _JSON.encode(value).encode()


def _loads(body: bytes) -> Any:
    """Parse a JSON body: pydantic-core's parser, else the standard library's verdict.

    pydantic-core (already under pydantic) parses our bodies several times faster. Any
    input it refuses goes to ``json.loads``, which decides: so what is accepted, and how
    it is refused (not UTF-8, not JSON), stays exactly the standard library's.
    """
    try:
        return from_json(body)
    except ValueError:
        return json.loads(body.decode("utf-8"))


def encode(
    message: Message,
    *,
    reply_to: str | None = None,
    deadline: datetime | None = None,
    extra_headers: dict[str, Any] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    now: datetime | None = None,
) -> Outgoing:
    """Map a Message to its wire form.

    Args:
        message: the envelope to send.
        reply_to: the queue answers must go to (AMQP ``reply_to``).
        deadline: when the sender stops waiting; sets a header and the AMQP expiration.
        extra_headers: more flat headers (e.g. the retry attempt).
        max_body_bytes: refuse larger bodies before the broker sees them.
        now: the time the expiration counts from (default: the clock's; given only
            to make the result reproducible, as the golden vectors do).

    Raises:
        InvalidMessageError: content or metadata is not JSON-serialisable.
        MessageTooLargeError: body, metadata or an id exceed their limit.
    """
    if (
        len(message.id) > _SHORT_CHARS
        or (message.reply_to is not None and len(message.reply_to) > _SHORT_CHARS)
        or (message.conversation_id is not None and len(message.conversation_id) > _SHORT_CHARS)
    ):
        _check_id_lengths(message)
    try:
        body = _dumps(message.content)
    except (TypeError, ValueError) as exc:
        raise InvalidMessageError(f"message {message.id}: content is not JSON: {exc}") from exc
    if len(body) > max_body_bytes:
        raise MessageTooLargeError(
            f"message {message.id}: body is {len(body)} bytes, limit {max_body_bytes}"
        )
    ts = message.timestamp
    headers: dict[str, Any] = {
        H_SENDER: message.sender,
        H_RECIPIENT: message.recipient,
        H_TIMESTAMP_US: to_us(ts),
    }
    if message.conversation_id is not None:
        headers[H_CONVERSATION] = message.conversation_id
    if message.metadata:
        try:
            meta = _JSON.encode(message.metadata)
        except (TypeError, ValueError) as exc:
            raise InvalidMessageError(f"message {message.id}: metadata is not JSON: {exc}") from exc
        if len(meta.encode()) > MAX_HEADER_BYTES:
            raise MessageTooLargeError(
                f"message {message.id}: metadata is {len(meta.encode())} bytes as a header,"
                f" limit {MAX_HEADER_BYTES}; put large data in content"
            )
        headers[H_METADATA] = meta
    expiration_s: float | None = None
    if deadline is not None:
        headers[H_DEADLINE_US] = to_us(deadline)
        sent_at = datetime.now(UTC) if now is None else now
        expiration_s = max((deadline - sent_at).total_seconds(), 0.001)
    if extra_headers:
        headers.update(extra_headers)
    return Outgoing(
        routing_key=routing_key(message),
        body=body,
        headers=headers,
        message_id=message.id,
        type=message.type.value,
        priority=int(message.priority),
        timestamp=ts,
        correlation_id=message.reply_to,
        reply_to=reply_to,
        expiration_s=expiration_s,
    )


def _check_id_lengths(message: Message) -> None:
    for name, text in (
        ("id", message.id),
        ("reply_to", message.reply_to),
        ("conversation_id", message.conversation_id),
    ):
        if text is not None and len(text.encode()) > MAX_ID_BYTES:
            raise MessageTooLargeError(
                f"message {message.id[:40]}...: {name} is {len(text.encode())} bytes,"
                f" limit {MAX_ID_BYTES}"
            )


class IncomingLike(Protocol):
    """The AMQP properties :func:`decode` reads (aio-pika's IncomingMessage has them)."""

    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> Any: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def priority(self) -> int | None: ...
    @property
    def timestamp(self) -> datetime | None: ...
    @property
    def routing_key(self) -> str | None: ...


def decode(
    incoming: IncomingLike, *, inbox_owner: str = "", max_body_bytes: int | None = None
) -> Message:
    """Read a Message from an AMQP delivery, ours or a foreign client's.

    Missing pieces get defaults: no ``message_id`` -> a new uuid; no ``x-sender`` ->
    the routing key's sender word (or ``""``); no recipient -> the key's recipient
    word, ``""`` for a routed message (word ``-``), else ``inbox_owner``; no
    timestamp -> now; no priority (or 0, which is how aio-pika and RabbitMQ read a
    missing one) -> NORMAL, though RabbitMQ itself ranks it below LOW.

    Whatever a foreign client sends, this raises InvalidMessageError or returns: a
    header we read that is not text (a table, an array, a number, bytes that are not
    UTF-8) is refused, not converted.

    Args:
        incoming: the delivery.
        inbox_owner: the agent whose inbox it came from.
        max_body_bytes: refuse a larger body before parsing it (None: no limit).

    Raises:
        InvalidMessageError: wrong content type, body too large or not UTF-8 JSON, bad
            type, a header of the wrong type, metadata that is not a JSON object.
    """
    if max_body_bytes is not None and len(incoming.body) > max_body_bytes:
        raise MessageTooLargeError(
            f"body is {len(incoming.body)} bytes, limit {max_body_bytes}: not parsed"
        )
    content_type = (incoming.content_type or CONTENT_TYPE).split(";")[0].strip().lower()
    if content_type != CONTENT_TYPE:
        raise InvalidMessageError(f"content type {incoming.content_type!r} is not {CONTENT_TYPE}")
    try:
        content = _loads(incoming.body)
    except UnicodeDecodeError as exc:
        raise InvalidMessageError(f"body is not UTF-8: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise InvalidMessageError(f"body is not JSON: {exc}") from exc
    headers = incoming.headers or {}
    words = (incoming.routing_key or "").split(".")
    key_words = words if len(words) == 4 else [None, None, None, None]

    msg_type = incoming.type or key_words[0] or MessageType.NOTIFICATION.value
    type_ = _TYPES.get(msg_type)
    if type_ is None:
        raise InvalidMessageError(f"unknown message type {msg_type!r}")

    sender = header_str(headers, H_SENDER)
    if sender is None:
        sender = key_words[2] if key_words[2] not in (None, NO_AGENT) else ""
    recipient = _recipient(header_str(headers, H_RECIPIENT), key_words[3], inbox_owner)

    metadata: dict[str, Any] = {}
    raw_meta = header_str(headers, H_METADATA)
    if raw_meta is not None:
        try:
            metadata = json.loads(raw_meta)
        except (ValueError, RecursionError) as exc:
            raise InvalidMessageError(f"{H_METADATA} is not JSON: {exc}") from exc
        if not isinstance(metadata, dict):
            raise InvalidMessageError(f"{H_METADATA} must be a JSON object")

    ts_us = headers.get(H_TIMESTAMP_US)
    if isinstance(ts_us, int) and not isinstance(ts_us, bool):
        timestamp = from_us(ts_us)
    elif incoming.timestamp is not None:
        timestamp = incoming.timestamp
    else:
        timestamp = datetime.now(UTC)

    # aio-pika reads a missing priority as 0, and RabbitMQ queues a missing one as 0:
    # so 0 means "none given", which the contract makes NORMAL; above 4 is URGENT.
    priority = incoming.priority
    prio = (
        MessagePriority.NORMAL
        if not priority
        else _PRIORITIES[min(max(priority, 1), INBOX_MAX_PRIORITY)]
    )

    try:
        return Message(
            id=incoming.message_id or str(uuid.uuid4()),
            sender=sender,
            recipient=recipient,
            type=type_,
            priority=prio,
            content=content,
            metadata=metadata,
            timestamp=timestamp,
            reply_to=incoming.correlation_id,
            conversation_id=header_str(headers, H_CONVERSATION),
        )
    except ValueError as exc:
        raise InvalidMessageError(f"invalid envelope: {exc}") from exc


_TYPES: dict[str, MessageType] = {t.value: t for t in MessageType}
_PRIORITIES: dict[int, MessagePriority] = {int(p): p for p in MessagePriority}


def _recipient(header: str | None, word: str | None, inbox_owner: str) -> str:
    """The recipient of a delivery: ``""`` for a routed one, so its router can decide.

    The ``x-recipient`` header wins: it is empty exactly for a routed message, and it
    outlives the routing key, which a retry or dead-letter hop replaces with a queue
    name. Without the header, the key's word (``-``: routed), else the inbox's owner.
    """
    if header is not None:
        return header
    if word is None:
        return inbox_owner
    return "" if word == NO_AGENT else word
