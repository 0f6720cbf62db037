"""AMQP message properties that marshal fast: the publish hot path's content header.

pamqp's ``Basic.Properties.marshal`` looks every field's type up by name and encodes
it through a generic dispatcher; for the handful of strings, octets, a timestamp and
a table of flat string/integer headers that every message of ours carries, that is
most of the cost of a publish's frames. :class:`FastProperties` writes the same bytes
directly (``tests/unit/test_properties.py`` holds it to pamqp, byte for byte) and
hands anything unusual (a nested header table, a bool, an oversized string) to pamqp.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

from pamqp import encode
from pamqp.commands import Basic

_U8 = struct.Struct("B").pack
_U16 = struct.Struct(">H").pack
_U32 = struct.Struct(">I").pack
_U64 = struct.Struct(">Q").pack
_I8 = struct.Struct(">b").pack
_I16 = struct.Struct(">h").pack
_I32 = struct.Struct(">i").pack
_I64 = struct.Struct(">q").pack


class _Unusual(Exception):
    """A value the fast path does not encode; pamqp does it instead."""


def _shortstr(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _Unusual
    data = value.encode("utf-8")
    if len(data) > 255:
        raise _Unusual
    return _U8(len(data)) + data


def _octet(value: Any) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= 255:
        raise _Unusual
    return _U8(value)


def _integer(value: int) -> bytes:
    # pamqp.encode.table_integer: the smallest type that holds the value.
    if -128 <= value <= 127:
        return b"b" + _I8(value)
    if -32768 <= value <= 32767:
        return b"s" + _I16(value)
    if 0 <= value <= 65535:
        return b"u" + _U16(value)
    if -2147483648 <= value <= 2147483647:
        return b"I" + _I32(value)
    if 0 <= value <= 4294967295:
        return b"i" + _U32(value)
    if -9223372036854775808 <= value <= 9223372036854775807:
        return b"l" + _I64(value)
    raise _Unusual


_names: dict[str, bytes] = {}
"""Header names as encoded short strings; ours are few, so the cache stays small."""


def _name(key: Any) -> bytes:
    name = _names.get(key)
    if name is None:
        if type(key) is not str or len(key.encode("utf-8")) > 128:  # pamqp truncates
            raise _Unusual
        name = _shortstr(key)
        if len(_names) < 1024:
            _names[key] = name
    return name


def _table(headers: Any) -> bytes:
    # pamqp.encode.field_table: items sorted by name; values by encode_table_value.
    if type(headers) is not dict:
        raise _Unusual
    parts = []
    for key in sorted(headers):
        value = headers[key]
        kind = type(value)
        if kind is str:
            data = value.encode("utf-8")
            parts.append(_name(key) + b"S" + _U32(len(data)) + data)
        elif kind is int:
            parts.append(_name(key) + _integer(value))
        else:
            parts.append(_name(key) + encode.encode_table_value(value))
    data = b"".join(parts)
    return _U32(len(data)) + data


class FastProperties(Basic.Properties):
    """``Basic.Properties`` whose :meth:`marshal` is quick for our messages' fields."""

    def marshal(self) -> bytes:
        """The same bytes as ``Basic.Properties.marshal``."""
        try:
            return self._marshal_fast()
        except _Unusual:
            return super().marshal()

    def _marshal_fast(self) -> bytes:
        # Property order and flag bits of AMQP 0-9-1's basic class (pamqp's __slots__).
        # pamqp leaves out None and "" values; so does this.
        flags = 0
        out = b""
        value: Any = self.content_type
        if value is not None and value != "":
            flags = 0x8000
            out = _shortstr(value)
        value = self.content_encoding
        if value is not None and value != "":
            flags |= 0x4000
            out += _shortstr(value)
        value = self.headers
        if value is not None:
            flags |= 0x2000
            out += _table(value) if value else b"\x00\x00\x00\x00"
        value = self.delivery_mode
        if value is not None:
            flags |= 0x1000
            out += _octet(value)
        value = self.priority
        if value is not None:
            flags |= 0x0800
            out += _octet(value)
        value = self.correlation_id
        if value is not None and value != "":
            flags |= 0x0400
            out += _shortstr(value)
        value = self.reply_to
        if value is not None and value != "":
            flags |= 0x0200
            out += _shortstr(value)
        value = self.expiration
        if value is not None and value != "":
            flags |= 0x0100
            out += _shortstr(value)
        value = self.message_id
        if value is not None and value != "":
            flags |= 0x0080
            out += _shortstr(value)
        value = self.timestamp
        if value is not None:
            if type(value) is not datetime:
                raise _Unusual
            if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
                value = value.replace(tzinfo=UTC)
            flags |= 0x0040
            out += _U64(int(value.timestamp()))
        value = self.message_type
        if value is not None and value != "":
            flags |= 0x0020
            out += _shortstr(value)
        value = self.user_id
        if value is not None and value != "":
            flags |= 0x0010
            out += _shortstr(value)
        value = self.app_id
        if value is not None and value != "":
            flags |= 0x0008
            out += _shortstr(value)
        value = self.cluster_id
        if value is not None and value != "":
            flags |= 0x0004
            out += _shortstr(value)
        return _U16(flags) + out
