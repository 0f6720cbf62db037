"""The message envelope agents exchange, and helpers that build the common ones.

Pure data: nothing here knows about AMQP. :mod:`amqp_agents.wire` maps a
:class:`Message` to and from its wire form.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import InvalidMessageError

AGENT_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
"""Agent ids become part of queue names and routing-key words: no dots, no wildcards."""

_AGENT_ID = re.compile(AGENT_ID_PATTERN)
_AGENT_ID_OR_EMPTY = f"^(?:{AGENT_ID_PATTERN[1:-1]})?$"


class MessageType(StrEnum):
    """What a message is for; the value is the first word of its routing key."""

    REQUEST = "request"
    RESPONSE = "response"
    NOTIFICATION = "notification"
    TASK = "task"
    RESULT = "result"
    ERROR = "error"
    STATUS = "status"


class MessagePriority(IntEnum):
    """How urgent a message is; inboxes deliver higher values first (AMQP priority)."""

    LOW = 1
    NORMAL = 2
    HIGH = 3
    URGENT = 4


def validate_agent_id(agent_id: str) -> str:
    """Return ``agent_id`` if it is a valid agent id, else raise.

    >>> validate_agent_id("writer-2")
    'writer-2'
    >>> validate_agent_id("a.b")  # dots would split the routing key
    Traceback (most recent call last):
    ...
    amqp_agents.errors.InvalidMessageError: invalid agent id 'a.b': ...

    Raises:
        InvalidMessageError: the id does not match :data:`AGENT_ID_PATTERN`.
    """
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        raise InvalidMessageError(f"invalid agent id {agent_id!r}: must match {AGENT_ID_PATTERN}")
    return agent_id


def _new_id() -> str:
    """A random (version 4) UUID string from the OS's secure source.

    Message ids double as the correlation ids of replies, so they must be unguessable,
    not only unique: an agent that could predict a pending request's id could answer
    it in the real handler's place. (A seeded PRNG was ~1 us faster per id.)
    """
    return str(uuid.uuid4())


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """A message between agents.

    ``sender`` and ``recipient`` are agent ids; an empty string means "unknown sender"
    or "no recipient: let the router distribute it". ``reply_to`` is the id of the
    message this one answers; ``conversation_id`` groups the messages of one exchange.
    """

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    id: str = Field(default_factory=_new_id, min_length=1, max_length=255)
    # Checked by pydantic-core's regex (no Python call per field); same ids as
    # validate_agent_id accepts, or empty.
    sender: str = Field(default="", pattern=_AGENT_ID_OR_EMPTY)
    recipient: str = Field(default="", pattern=_AGENT_ID_OR_EMPTY)
    type: MessageType = MessageType.NOTIFICATION
    priority: MessagePriority = MessagePriority.NORMAL
    content: Any = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime = Field(default_factory=_utc_now)
    reply_to: str | None = None
    conversation_id: str | None = None

    @field_validator("timestamp")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        # A naive timestamp is read as UTC: comparing naive and aware datetimes fails later.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; :meth:`from_dict` turns it back into an equal Message."""
        return {
            "id": self.id,
            "sender": self.sender,
            "recipient": self.recipient,
            "type": self.type.value,
            "priority": int(self.priority),
            "content": self.content,
            "metadata": self.metadata,
            "timestamp": self.timestamp.isoformat(),
            "reply_to": self.reply_to,
            "conversation_id": self.conversation_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        """Build a Message from :meth:`to_dict` output.

        Raises:
            InvalidMessageError: a field is missing or invalid.
        """
        try:
            return cls.model_validate(data)
        except ValueError as exc:
            raise InvalidMessageError(f"invalid message: {exc}") from exc


def create_task_message(
    sender: str,
    recipient: str,
    task_description: str,
    context: dict[str, Any] | None = None,
    priority: MessagePriority = MessagePriority.NORMAL,
) -> Message:
    """A TASK starting a new conversation; content is ``{"description", "context"}``."""
    return Message(
        sender=sender,
        recipient=recipient,
        type=MessageType.TASK,
        priority=priority,
        content={"description": task_description, "context": context or {}},
        conversation_id=_new_id(),
    )


def create_result_message(
    sender: str, recipient: str, result: Any, original_message: Message
) -> Message:
    """A RESULT answering ``original_message`` in its conversation, at its priority."""
    return Message(
        sender=sender,
        recipient=recipient,
        type=MessageType.RESULT,
        priority=original_message.priority,
        content=result,
        reply_to=original_message.id,
        conversation_id=original_message.conversation_id,
    )
