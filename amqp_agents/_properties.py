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


# --- the other way: reading a delivery's content header ----------------------------------
_UNPACK = {
    ord("b"): (struct.Struct(">b").unpack_from, 1),
    ord("B"): (struct.Struct("B").unpack_from, 1),
    ord("s"): (struct.Struct(">h").unpack_from, 2),
    ord("u"): (struct.Struct(">H").unpack_from, 2),
    ord("I"): (struct.Struct(">i").unpack_from, 4),
    ord("i"): (struct.Struct(">I").unpack_from, 4),
    ord("l"): (struct.Struct(">q").unpack_from, 8),
    ord("L"): (struct.Struct(">q").unpack_from, 8),  # pamqp reads L as signed too
}
"""Fixed-size integer field types: how to read them, and their size (pamqp's mapping)."""
_U32_AT = struct.Struct(">I").unpack_from
_U64_AT = struct.Struct(">Q").unpack_from
_S = ord("S")
_T = ord("t")

_SHORTSTR_FIELDS = {
    0x8000: "content_type",
    0x4000: "content_encoding",
    0x0400: "correlation_id",
    0x0200: "reply_to",
    0x0100: "expiration",
    0x0080: "message_id",
    0x0020: "message_type",
    0x0010: "user_id",
    0x0008: "app_id",
    0x0004: "cluster_id",
}


def _read_shortstr(data: bytes, offset: int) -> tuple[str, int]:
    end = offset + 1 + data[offset]
    if end > len(data):
        raise _Unusual  # truncated: pamqp decides
    try:
        return data[offset + 1 : end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise _Unusual from None  # the frame guard's replacement, through pamqp


def _read_table(data: bytes, offset: int) -> tuple[dict[str, Any], int]:
    # pamqp.decode.field_table, for flat tables of strings, integers and booleans.
    end = offset + 4 + _U32_AT(data, offset)[0]
    if end > len(data):
        raise _Unusual
    offset += 4
    table: dict[str, Any] = {}
    while offset < end:
        name, offset = _read_shortstr(data, offset)
        if offset >= end:
            raise _Unusual
        kind = data[offset]
        offset += 1
        if kind == _S:
            if offset + 4 > end:
                raise _Unusual
            stop = offset + 4 + _U32_AT(data, offset)[0]
            if stop > end:
                raise _Unusual
            raw = data[offset + 4 : stop]
            try:
                table[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                table[name] = raw  # as pamqp: bytes
            offset = stop
        elif kind == _T:
            if offset + 1 > end:
                raise _Unusual
            table[name] = bool(data[offset])
            offset += 1
        else:
            fixed = _UNPACK.get(kind)
            if fixed is None or offset + fixed[1] > end:
                raise _Unusual  # nested tables, arrays, floats, timestamps...: pamqp
            table[name] = fixed[0](data, offset)[0]
            offset += fixed[1]
    if offset != end:
        raise _Unusual
    return table, end


def unmarshal_fast(properties: Basic.Properties, flags: int, data: bytes) -> bool:
    """Set what ``data`` holds on ``properties``, as ``Basic.Properties.unmarshal``
    would; False (nothing set) for anything unusual, which pamqp must decode then.

    The hot path of every delivery: pamqp slices the remaining bytes for each field and
    each header and dispatches on type names; this reads them in place. Held to pamqp,
    value for value, by ``tests/unit/test_properties.py``.
    """
    values: list[tuple[str, Any]] = []
    offset = 0
    try:
        for flag in (0x8000, 0x4000):
            if flags & flag:
                text, offset = _read_shortstr(data, offset)
                values.append((_SHORTSTR_FIELDS[flag], text))
        if flags & 0x2000:
            table, offset = _read_table(data, offset)
            values.append(("headers", table))
        if flags & 0x1000:
            values.append(("delivery_mode", data[offset]))
            offset += 1
        if flags & 0x0800:
            values.append(("priority", data[offset]))
            offset += 1
        for flag in (0x0400, 0x0200, 0x0100, 0x0080):
            if flags & flag:
                text, offset = _read_shortstr(data, offset)
                values.append((_SHORTSTR_FIELDS[flag], text))
        if flags & 0x0040:
            if offset + 8 > len(data):
                raise _Unusual
            seconds = _U64_AT(data, offset)[0]
            if seconds > 0xFFFFFFFF:
                raise _Unusual  # pamqp reads it as milliseconds; the guard clamps
            values.append(("timestamp", datetime.fromtimestamp(seconds, tz=UTC)))
            offset += 8
        for flag in (0x0020, 0x0010, 0x0008, 0x0004):
            if flags & flag:
                text, offset = _read_shortstr(data, offset)
                values.append((_SHORTSTR_FIELDS[flag], text))
    except (_Unusual, IndexError, struct.error):
        return False
    for name, value in values:
        setattr(properties, name, value)
    return True
