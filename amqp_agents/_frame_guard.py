"""A hostile message must not kill the connection that receives it.

pamqp, under aiormq, decodes every frame the broker relays, and it raises on values
that RabbitMQ relays unchecked from any publisher. An exception there ends aiormq's
reader, so the whole connection drops; the unacknowledged delivery goes back to the
queue, the robust connection reconnects, receives it again and drops again: one
message from anyone who may publish to an inbox stops the agent for good (aiormq issue
#186 reports the timestamp case). Measured on RabbitMQ 3.10, each of these does it:

    invalid UTF-8 in a short string      message_id, type, content_type, a header's
                                         name, a routing key
    a timestamp past the year 9999       the timestamp property, a ``T`` header value
    tables or arrays nested deeply       a header nested a few thousand levels

:func:`install` makes those decoders total, so the delivery reaches the application,
whose own decoding (:func:`amqp_agents.wire.decode`) then judges it:

    short string, invalid UTF-8   -> the text with U+FFFD for each bad byte (header
                                     names too)
    timestamp out of range        -> the largest datetime (9999-12-31, UTC)
    nested beyond MAX_NESTING     -> None in place of the deeper table or array

Only outcomes that used to be exceptions change; every frame pamqp decoded before
decodes to the same values. It also reads ordinary content headers in place
(:func:`amqp_agents._properties.unmarshal_fast`, several times faster than pamqp's
generic decoder, same values), and leaves anything unusual to pamqp and the guards.
:func:`amqp_agents.connection.connect` installs it, before its first connection
(importing amqp_agents patches nothing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pamqp import common, decode
from pamqp.commands import Basic

from ._properties import unmarshal_fast

MAX_NESTING = 32
"""Tables/arrays inside a header deeper than this are not decoded (their value is None)."""

_LATEST = datetime.max.replace(tzinfo=UTC)
_Decoder = Callable[[bytes], tuple[int, Any]]
_state = threading.local()


def install() -> None:
    """Wrap pamqp's short-string, timestamp, table and array decoders; idempotent."""
    if getattr(decode, "_amqp_agents_guard", False):
        return
    decode.METHODS["shortstr"] = _tolerant_short_str(decode.METHODS["shortstr"])
    decode.METHODS["timestamp"] = _tolerant_timestamp(decode.METHODS["timestamp"])
    decode.TABLE_MAPPING[b"T"] = _tolerant_timestamp(decode.TABLE_MAPPING[b"T"])
    decode.METHODS["table"] = _bounded_nesting(_tolerant_table(decode.METHODS["table"]))
    decode.TABLE_MAPPING[b"F"] = _bounded_nesting(_tolerant_table(decode.TABLE_MAPPING[b"F"]))
    decode.METHODS["array"] = _bounded_nesting(decode.METHODS["array"])
    decode.TABLE_MAPPING[b"A"] = _bounded_nesting(decode.TABLE_MAPPING[b"A"])
    _read_properties_in_place()
    decode._amqp_agents_guard = True  # type: ignore[attr-defined]


def _read_properties_in_place() -> None:
    """Every delivery's content header through :func:`unmarshal_fast`; what it leaves
    (anything unusual) to pamqp's own unmarshal, which goes through the guards above."""
    original = Basic.Properties.unmarshal

    def unmarshal(self: Basic.Properties, flags: int, data: bytes) -> None:
        if not unmarshal_fast(self, flags, data):
            original(self, flags, data)

    Basic.Properties.unmarshal = unmarshal  # type: ignore[method-assign,assignment]


def _tolerant_short_str(original: _Decoder) -> _Decoder:
    def short_str(value: bytes) -> tuple[int, Any]:
        try:
            return original(value)
        except UnicodeDecodeError:
            length = value[0]
            return length + 1, value[1 : length + 1].decode("utf-8", "replace")

    return short_str


def _tolerant_table(original: _Decoder) -> _Decoder:
    def field_table(value: bytes) -> tuple[int, Any]:
        try:
            return original(value)
        except UnicodeDecodeError:  # a field name; pamqp decodes names itself
            return _table_replacing_names(value)

    return field_table


def _table_replacing_names(value: bytes) -> tuple[int, dict[str, Any]]:
    """pamqp's ``decode.field_table``, with U+FFFD for bytes in names that are not UTF-8."""
    (length,) = common.Struct.integer.unpack(value[0:4])
    end = 4 + length
    if end > len(value):
        raise ValueError("Field table length exceeds available data")
    offset, table = 4, {}
    while offset < end:
        name_length = value[offset]
        offset += 1
        if offset + name_length > end:
            raise ValueError("Field table key length exceeds data")
        name = value[offset : offset + name_length].decode("utf-8", "replace")
        offset += name_length
        consumed, table[name] = decode.embedded_value(value[offset:])
        offset += consumed
    return end, table


def _tolerant_timestamp(original: _Decoder) -> _Decoder:
    def timestamp(value: bytes) -> tuple[int, Any]:
        try:
            return original(value)
        except (ValueError, OverflowError, OSError):
            if len(value) < 8:  # a truncated frame stays an error
                raise
            return 8, _LATEST

    return timestamp


def _bounded_nesting(original: _Decoder) -> _Decoder:
    # A table and an array both start with their length in 4 bytes; skipping one
    # consumes those and the length. The depth is per thread: decoding is synchronous.
    def nested(value: bytes) -> tuple[int, Any]:
        depth: int = getattr(_state, "depth", 0)
        if depth >= MAX_NESTING:
            if len(value) < 4:
                raise ValueError("truncated table or array")
            (length,) = common.Struct.integer.unpack(value[0:4])
            return 4 + length, None
        _state.depth = depth + 1
        try:
            return original(value)
        finally:
            _state.depth = depth

    return nested
