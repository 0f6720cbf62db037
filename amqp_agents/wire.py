"""The wire contract in code: names, routing keys, and Message <-> AMQP mapping.

This is the only module that knows how a :class:`~amqp_agents.message.Message` looks
on the wire; docs/wire-format.md describes the same contract for other languages.
It is pure: it builds plain values and reads any object that has the AMQP
properties of an incoming message (an aio-pika ``IncomingMessage`` does).

Names for namespace ``ns``::

    exchange_name("agents")            -> "agents"            (topic, durable)
    inbox_name("agents", "writer")     -> "agents.inbox.writer"
    inbox_binding_key("writer")        -> "*.*.*.writer"
    route_binding_key(msg_type="task") -> "task.*.*.-"       (a route's binding)
    routing_key(msg)                   -> "task.2.coordinator.writer"
    dead_letter_exchange_name("agents")-> "agents.dlx"        (fanout)
    dead_queue_name("agents")          -> "agents.dead"
    history_name("agents")             -> "agents.history"    (stream)
    reply_queue_name("agents", "w", t) -> "agents.reply.w.{t}" (exclusive, per connection)
    reply_exchange_name("agents")      -> "agents.replies"    (topic; reply queues bound by name)
    retry_exchange_name("agents", "w") -> "agents.retry.w"    (direct; one per agent)
    retry_queue_name("agents", "w", 0.2) -> "agents.retry.w.200ms"
    topology_record_name("agents")     -> "agents.topology"   (what `topology apply` bound)
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic_core import from_json

from .errors import InvalidMessageError, MessageTooLargeError
from .message import Message, MessagePriority, MessageType

CONTENT_TYPE = "application/json"
NO_AGENT = "-"
"""Routing-key word for an unknown sender or a recipient-less (routed) message."""

# Header names. Values stay flat scalars: a stream drops table/array headers.
H_SENDER = "x-sender"
H_RECIPIENT = "x-recipient"
H_CONVERSATION = "x-conversation-id"
H_METADATA = "x-metadata"
H_TIMESTAMP_US = "x-timestamp-us"
"""Microseconds since the epoch: AMQP's own timestamp property has whole seconds."""
H_DEADLINE_US = "x-deadline-us"
"""When the requester stops waiting (µs since the epoch); late work is dead-lettered."""
H_ATTEMPT = "x-attempt"
"""How many times a handler has already failed on this message (0 when absent)."""
H_DEAD_REASON = "x-dead-reason"
H_DEAD_AGENT = "x-dead-agent"
H_DEAD_ERROR_TYPE = "x-dead-error-type"
H_DEAD_ERROR_MESSAGE = "x-dead-error-message"
H_DEAD_ATTEMPTS = "x-dead-attempts"
H_HISTORY_MARKER = "x-history-marker"
"""Set only on the marker a history query appends to find the stream's current end."""

INBOX_MAX_PRIORITY = 4
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
"""Headers travel in one AMQP frame (frame_max defaults to 128 KiB); the broker closes
the connection on a larger one, so we refuse it first."""
MAX_ID_BYTES = 255
"""Message ids, ``reply_to`` and conversation ids: an AMQP short string's limit (the
conversation id is a header, held to the same limit so no id can swell the frame)."""
_SHORT_CHARS = MAX_ID_BYTES // 4
"""Up to this many characters a string is within MAX_ID_BYTES whatever they are."""

_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


def validate_namespace(ns: str) -> str:
    """Return ``ns`` if usable as a name prefix, else raise InvalidMessageError.

    >>> validate_namespace("prod.agents")
    'prod.agents'
    """
    if not _NAMESPACE.fullmatch(ns) or ns.startswith("amq."):
        raise InvalidMessageError(f"invalid namespace {ns!r}")
    return ns


def exchange_name(ns: str) -> str:
    """The topic exchange all agent traffic of ``ns`` is published to."""
    return ns


def inbox_name(ns: str, agent_id: str) -> str:
    """``inbox_name("agents", "writer") -> "agents.inbox.writer"``."""
    return f"{ns}.inbox.{agent_id}"


def inbox_binding_key(agent_id: str) -> str:
    """``inbox_binding_key("writer") -> "*.*.*.writer"``: every message addressed to it."""
    return f"*.*.*.{agent_id}"


def dead_letter_exchange_name(ns: str) -> str:
    """Fanout exchange the inboxes dead-letter into; bound to :func:`dead_queue_name`."""
    return f"{ns}.dlx"


def dead_queue_name(ns: str) -> str:
    """Where messages that could not be handled end, with headers saying why."""
    return f"{ns}.dead"


def history_name(ns: str) -> str:
    """The stream queue keeping a bounded, durable copy of the namespace's traffic."""
    return f"{ns}.history"


def reply_queue_name(ns: str, owner: str | None, token: str) -> str:
    """A private reply queue: ``{ns}.reply.{owner}.{token}``, or ``{ns}.reply.{token}``.

    The owner (an agent id) lets a broker permission name exactly the reply queues of
    one agent: ``reply_queue_name("agents", "writer", "ab12") -> "agents.reply.writer.ab12"``.
    """
    return f"{ns}.reply.{owner}.{token}" if owner else f"{ns}.reply.{token}"


def is_reply_queue(ns: str, queue: str) -> bool:
    """Whether ``queue`` is named as a reply queue of ``ns`` (``{ns}.reply.*``).

    Answers to such a queue go through :func:`reply_exchange_name`, where the queue is
    bound with its own name; any other ``reply_to`` needs the default exchange.

    >>> is_reply_queue("agents", "agents.reply.bob.0f3a"), is_reply_queue("agents", "amq.gen-x")
    (True, False)
    """
    return queue.startswith(f"{ns}.reply.")


def reply_exchange_name(ns: str) -> str:
    """The topic exchange answers go through: ``"agents" -> "agents.replies"``.

    Each reply queue is bound to it with its own name as binding key, and the history
    stream with :func:`history_reply_binding_key`, so every answer is kept there too.
    Unlike the default exchange it reaches no inbox, and a broker topic permission can
    say which keys a user may bind (docs/deploy.md).
    """
    return f"{ns}.replies"


def history_reply_binding_key(ns: str) -> str:
    """The history stream's binding on :func:`reply_exchange_name`: every reply queue name."""
    return f"{ns}.reply.#"


def topology_record_name(ns: str) -> str:
    """Holds one message: the bindings the last ``amqp-agents topology apply`` made.

    AMQP cannot list bindings, so ``topology plan`` compares with this record.
    """
    return f"{ns}.topology"


def retry_queue_name(ns: str, agent_id: str, delay_s: float) -> str:
    """``retry_queue_name("agents", "writer", 0.2) -> "agents.retry.writer.200ms"``.

    Bound to :func:`retry_exchange_name` with its own name as binding key.
    """
    return f"{ns}.retry.{agent_id}.{round(delay_s * 1000)}ms"


def retry_exchange_name(ns: str, agent_id: str) -> str:
    """The agent's own direct exchange into its retry queues: ``"agents.retry.writer"``.

    One per agent, so that a broker permission on the exchange (not a topic permission,
    which RabbitMQ before 4.0 does not check for ``CC``/``BCC`` keys) keeps every other
    user out of the agent's retry queues, which lead into its inbox.
    """
    return f"{ns}.retry.{agent_id}"


def retry_queue_arguments(ns: str, agent_id: str, delay_s: float) -> dict[str, Any]:
    """A retry queue: messages wait ``delay_s`` there, then go back into the inbox."""
    return {
        "x-queue-type": "classic",
        "x-message-ttl": round(delay_s * 1000),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": inbox_name(ns, agent_id),
    }


def route_binding_key(*, msg_type: str = "*", priority: str = "*", sender: str = "*") -> str:
    """The binding key of a route: only recipient-less messages, narrowed by the words given.

    ``route_binding_key(sender="bob") -> "*.*.bob.-"``; ``route_binding_key() -> "*.*.*.-"``.
    """
    return f"{msg_type}.{priority}.{sender}.{NO_AGENT}"


def routing_key(message: Message) -> str:
    """``{type}.{priority}.{sender}.{recipient}``, with ``-`` for an empty agent id.

    >>> routing_key(Message(sender="a", recipient="", type=MessageType.TASK))
    'task.2.a.-'
    """
    return (
        f"{message.type.value}.{int(message.priority)}."
        f"{message.sender or NO_AGENT}.{message.recipient or NO_AGENT}"
    )


def inbox_arguments(ns: str, *, max_length: int | None = None) -> dict[str, Any]:
    """Declaration arguments of an inbox; every declarer must use the same ones.

    ``reject-publish`` makes a full inbox refuse (the sender gets a nack and an
    :class:`~amqp_agents.errors.InboxFullError`) instead of silently dropping its head.
    """
    args: dict[str, Any] = {
        "x-queue-type": "classic",
        "x-max-priority": INBOX_MAX_PRIORITY,
        "x-dead-letter-exchange": dead_letter_exchange_name(ns),
        "x-overflow": "reject-publish",
    }
    if max_length is not None:
        args["x-max-length"] = max_length
    return args


def history_arguments(*, max_age: str = "7D", max_bytes: int = 1_000_000_000) -> dict[str, Any]:
    """Arguments of the history stream: retention by age and by size."""
    return {
        "x-queue-type": "stream",
        "x-max-age": max_age,
        "x-max-length-bytes": max_bytes,
        "x-stream-max-segment-size-bytes": min(max_bytes // 4, 100_000_000),
    }


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
) -> Outgoing:
    """Map a Message to its wire form.

    Args:
        message: the envelope to send.
        reply_to: the queue answers must go to (AMQP ``reply_to``).
        deadline: when the sender stops waiting; sets a header and the AMQP expiration.
        extra_headers: more flat headers (e.g. the retry attempt).
        max_body_bytes: refuse larger bodies before the broker sees them.

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
        H_TIMESTAMP_US: _to_us(ts),
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
        headers[H_DEADLINE_US] = _to_us(deadline)
        expiration_s = max((deadline - datetime.now(UTC)).total_seconds(), 0.001)
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
    timestamp -> now; no priority -> NORMAL (RabbitMQ itself ranks it below LOW).

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

    sender = _header_str(headers, H_SENDER)
    if sender is None:
        sender = key_words[2] if key_words[2] not in (None, NO_AGENT) else ""
    recipient = _recipient(_header_str(headers, H_RECIPIENT), key_words[3], inbox_owner)

    metadata: dict[str, Any] = {}
    raw_meta = _header_str(headers, H_METADATA)
    if raw_meta is not None:
        try:
            metadata = json.loads(raw_meta)
        except (ValueError, RecursionError) as exc:
            raise InvalidMessageError(f"{H_METADATA} is not JSON: {exc}") from exc
        if not isinstance(metadata, dict):
            raise InvalidMessageError(f"{H_METADATA} must be a JSON object")

    ts_us = headers.get(H_TIMESTAMP_US)
    if isinstance(ts_us, int) and not isinstance(ts_us, bool):
        timestamp = _from_us(ts_us)
    elif incoming.timestamp is not None:
        timestamp = incoming.timestamp
    else:
        timestamp = datetime.now(UTC)

    priority = incoming.priority
    if priority is None:
        prio = MessagePriority.NORMAL
    else:
        prio = _PRIORITIES[min(max(priority, 1), INBOX_MAX_PRIORITY)]

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
            conversation_id=_header_str(headers, H_CONVERSATION),
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


def addressed_to(routing_key: str | None, recipient: str, ns: str, agent_id: str) -> bool:
    """Whether a delivery found in ``agent_id``'s inbox was sent to it.

    The routing key is what the broker routed on and held against the publisher's
    topic permission. CC and BCC headers (which RabbitMQ before 4.0.x does not check)
    put a copy into more inboxes under the original key, so the key must name the
    agent (or ``-``: a routed message), or be the inbox's own name (a retry back from
    the agent's retry queue, or a foreign client on the default exchange); the
    recipient header must agree.

    >>> addressed_to("task.2.bob.writer", "writer", "agents", "writer")
    True
    >>> addressed_to("task.2.bob.-", "", "agents", "writer")  # routed to it
    True
    >>> addressed_to("agents.inbox.writer", "writer", "agents", "writer")  # a retry
    True
    >>> addressed_to("task.2.bob.reader", "reader", "agents", "writer")  # a CC copy
    False
    """
    if recipient and recipient != agent_id:
        return False
    if routing_key == inbox_name(ns, agent_id):
        return True
    words = (routing_key or "").split(".")
    return len(words) == 4 and words[3] in (agent_id, NO_AGENT)


def may_reply_to(ns: str, queue: str) -> bool:
    """Whether an agent may publish an answer into ``queue`` (a request's ``reply_to``).

    The namespace's reply queues are answered through :func:`reply_exchange_name`;
    server-named queues and direct reply-to only through the default exchange, which
    reaches any queue: a request naming someone's inbox would have the agent write
    into it on the requester's behalf. So only reply queues qualify.

    >>> may_reply_to("agents", "agents.reply.bob.0f3a")
    True
    >>> may_reply_to("agents", "amq.gen-JzTY20BRgKO")
    True
    >>> may_reply_to("agents", "agents.inbox.writer")
    False
    """
    return queue.startswith((f"{ns}.reply.", "amq.gen-", "amq.rabbitmq.reply-to"))


def deadline_of(headers: Any) -> datetime | None:
    """The requester's deadline carried by a delivery, if any."""
    value = (headers or {}).get(H_DEADLINE_US)
    if isinstance(value, int) and not isinstance(value, bool):
        return _from_us(value)
    return None


def attempt_of(headers: Any) -> int:
    """How many times handling this delivery has failed before (never below 0)."""
    value = (headers or {}).get(H_ATTEMPT, 0)
    # A negative count from a foreign client would buy a failing message extra retries.
    return max(value, 0) if isinstance(value, int) and not isinstance(value, bool) else 0


def _header_str(headers: Any, name: str) -> str | None:
    """A text header, or None when absent.

    Raises:
        InvalidMessageError: the value is not text (AMQP long strings may arrive as
            bytes: those must be UTF-8).
    """
    value = headers.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessageError(f"header {name} is not UTF-8") from None
    raise InvalidMessageError(f"header {name} must be a string, not {type(value).__name__}")


def header_text(value: Any) -> str:
    """A header value as text, whatever it is (bytes that are not UTF-8 get U+FFFD)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_us(ts: datetime) -> int:
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    # Clamped: a foreign value past what datetime holds means "never" or "long ago".
    try:
        return _EPOCH + timedelta(microseconds=us)
    except OverflowError:
        return _LATEST if us > 0 else _EARLIEST


_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)
