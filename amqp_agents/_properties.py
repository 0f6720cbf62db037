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


def _table_value(value: Any) -> bytes:
    # Mirrors pamqp.encode.encode_table_value / table_integer for str and int.
    if isinstance(value, str):
        data = value.encode("utf-8")
        return b"S" + _U32(len(data)) + data
    if isinstance(value, int) and not isinstance(value, bool):
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


def _table(headers: Any) -> bytes:
    if not isinstance(headers, dict):
        raise _Unusual
    parts = []
    for key, value in sorted(headers.items()):
        if not isinstance(key, str):
            raise _Unusual
        name = key.encode("utf-8")
        if len(name) > 128:  # pamqp truncates (and warns)
            raise _Unusual
        parts.append(_U8(len(name)) + name)
        try:
            parts.append(_table_value(value))
        except _Unusual:
            parts.append(encode.encode_table_value(value))
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
        parts = []
        if self.content_type is not None and self.content_type != "":
            flags |= 0x8000
            parts.append(_shortstr(self.content_type))
        if self.content_encoding is not None and self.content_encoding != "":
            flags |= 0x4000
            parts.append(_shortstr(self.content_encoding))
        if self.headers is not None:
            flags |= 0x2000
            parts.append(_table(self.headers) if self.headers else b"\x00\x00\x00\x00")
        for flag, octet in ((0x1000, self.delivery_mode), (0x0800, self.priority)):
            if octet is not None:
                if not isinstance(octet, int) or not 0 <= octet <= 255:
                    raise _Unusual
                flags |= flag
                parts.append(_U8(octet))
        for flag, text in (
            (0x0400, self.correlation_id),
            (0x0200, self.reply_to),
            (0x0100, self.expiration),
            (0x0080, self.message_id),
        ):
            if text is not None and text != "":
                flags |= flag
                parts.append(_shortstr(text))
        if self.timestamp is not None:
            ts = self.timestamp
            if not isinstance(ts, datetime):
                raise _Unusual
            if ts.tzinfo is None or ts.tzinfo.utcoffset(ts) is None:
                ts = ts.replace(tzinfo=UTC)
            flags |= 0x0040
            parts.append(_U64(int(ts.timestamp())))
        for flag, text in (
            (0x0020, self.message_type),
            (0x0010, self.user_id),
            (0x0008, self.app_id),
            (0x0004, self.cluster_id),
        ):
            if text is not None and text != "":
                flags |= flag
                parts.append(_shortstr(text))
        return _U16(flags) + b"".join(parts)
