"""The AMQP headers of the contract: their names, their limits, and how to read them.

Header values stay flat scalars (strings, integers): a RabbitMQ stream drops table
and array headers, and history is a stream. Readers here are total: whatever a
foreign client put in a header, they return a value or raise InvalidMessageError.
Also what a dead letter adds to the original's headers (:func:`dead_letter_headers`),
so that rule is written once, next to the names it uses.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from amqp_agents.errors import InvalidMessageError

CONTENT_TYPE = "application/json"

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
H_DEAD_ORIGINAL_EXPIRATION = "x-dead-original-expiration"
"""The original's AMQP ``expiration`` (ms, as text), which a dead letter must not carry."""
H_TRACEPARENT = "traceparent"
"""W3C trace context (https://www.w3.org/TR/trace-context/): the trace and parent span of
the publish; read and written only when tracing is on (amqp_agents.tracing)."""
H_TRACESTATE = "tracestate"
"""W3C trace context: vendor-specific trace state, carried along with ``traceparent``."""
H_HISTORY_MARKER = "x-history-marker"
"""Set only on the marker a history query appends to find the stream's current end."""
H_STREAM_MARKER = "x-stream-marker"
"""Set only on the marker a reader of a control stream (cancels, cards) appends to find
its current end; every reader skips markers."""

MAX_TASK_DEADLINE_S = 24 * 3600
"""The longest a task's deadline may lie after its timestamp: an agent holds a task to
``min(deadline, timestamp + this)``. So every task an agent can still run was sent less
than this long ago, and a reader of the cancels stream may skip older records."""

DEAD_ERROR_MESSAGE_CHARS = 4000
"""An exception's text is cut here: the header travels in one frame with the others."""


def deadline_of(headers: Any) -> datetime | None:
    """The requester's deadline carried by a delivery, if any."""
    value = (headers or {}).get(H_DEADLINE_US)
    if isinstance(value, int) and not isinstance(value, bool):
        return from_us(value)
    return None


def held_deadline(headers: Any, sent_at: datetime) -> datetime | None:
    """The deadline an agent holds a task to: the requester's (None: it has none), but
    at most :data:`MAX_TASK_DEADLINE_S` after ``sent_at`` (its timestamp)."""
    deadline = deadline_of(headers)
    if deadline is None:
        return None
    return min(deadline, sent_at + timedelta(seconds=MAX_TASK_DEADLINE_S))


def attempt_of(headers: Any) -> int:
    """How many times handling this delivery has failed before (never below 0)."""
    value = (headers or {}).get(H_ATTEMPT, 0)
    # A negative count from a foreign client would buy a failing message extra retries.
    return max(value, 0) if isinstance(value, int) and not isinstance(value, bool) else 0


class DeadLetterSource(Protocol):
    """What :func:`dead_letter_headers` reads of a delivery (aio-pika's IncomingMessage)."""

    @property
    def headers(self) -> Any: ...
    @property
    def expiration(self) -> Any:
        """The AMQP ``expiration`` in seconds (a float), as aio-pika decodes it, or None."""


def dead_letter_headers(
    delivery: DeadLetterSource,
    *,
    reason: str,
    agent_id: str,
    error: BaseException | None = None,
    attempts: int | None = None,
) -> dict[str, Any]:
    """The headers a dead letter adds to (or sets over) the original's headers.

    ``x-dead-attempts`` is always present: ``attempts`` when a handler just failed for
    the last time, else the failures the delivery already carries (``x-attempt``, 0
    for a message no handler ever ran on: undecodable, misaddressed, expired...).

    The original's AMQP ``expiration`` moves into ``x-dead-original-expiration``
    (RabbitMQ's own dead-lettering does the same in ``x-death``): kept as a property,
    it would make the broker drop the dead letter from ``{ns}.dead`` once it ran out,
    and that queue has nowhere to dead-letter it to.

    >>> class D:
    ...     headers = {"x-attempt": 2}
    ...     expiration = 30.0
    >>> dead_letter_headers(D(), reason="expired", agent_id="writer")
    ... # doctest: +NORMALIZE_WHITESPACE
    {'x-dead-reason': 'expired', 'x-dead-agent': 'writer', 'x-dead-attempts': 2,
     'x-dead-original-expiration': '30000'}
    """
    headers: dict[str, Any] = {H_DEAD_REASON: reason, H_DEAD_AGENT: agent_id}
    if error is not None:
        headers[H_DEAD_ERROR_TYPE] = type(error).__name__
        headers[H_DEAD_ERROR_MESSAGE] = str(error)[:DEAD_ERROR_MESSAGE_CHARS]
    headers[H_DEAD_ATTEMPTS] = attempt_of(delivery.headers) if attempts is None else attempts
    expiration = delivery.expiration
    if isinstance(expiration, int | float) and not isinstance(expiration, bool):
        headers[H_DEAD_ORIGINAL_EXPIRATION] = str(round(expiration * 1000))
    return headers


def header_str(headers: Any, name: str) -> str | None:
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
_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def to_us(ts: datetime) -> int:
    """Microseconds since the epoch, exactly (``timestamp()`` is a float: it rounds)."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """The instant ``us`` microseconds after the epoch, clamped to what datetime holds.

    A foreign value past that range means "never" or "long ago".
    """
    try:
        return _EPOCH + timedelta(microseconds=us)
    except OverflowError:
        return _LATEST if us > 0 else _EARLIEST
