"""Reading frames off our connections' sockets: the receive hot path below aiormq.

aiormq's ``FrameReceiver.get_frame`` reads each frame in three ``readexactly`` calls
into a ``BytesIO`` and hands the bytes to pamqp, whose generic decoder looks every
field's type up by name. Every delivery is three frames and every confirm one, so
that is a large share of what receiving costs. :class:`FastFrameReceiver` reads a
frame in two calls and decodes the frames an agent lives on (``basic.deliver``,
``basic.ack``, content bodies) in place; anything else still goes to pamqp
(``tests/unit/test_frame_reader.py`` holds the two to the same frames).

It serves only connections opened through :class:`AgentTransportFactory` (the
library's own): any other aiormq connection in the process keeps aiormq's reader.
"""

from __future__ import annotations

import asyncio
import struct
import weakref
from typing import Any

import aiormq.connection
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.exceptions import PAMQPException
from yarl import URL

from ._delivery_tap import deliver_frame

_HEAD = struct.Struct(">BHI").unpack
_I64_AT = struct.Struct(">q").unpack_from  # pamqp reads a delivery tag as signed
_DELIVER = struct.pack(">HH", 60, 60)
_ACK = struct.pack(">HH", 60, 80)
_FRAME_END = 0xCE

_ours: weakref.WeakSet[asyncio.StreamReader] = weakref.WeakSet()
"""The stream readers of our connections (AgentTransportFactory made them)."""


class AgentTransportFactory(aiormq.connection.TransportFactory):
    """aiormq's TCP or TLS transport (by the URL's scheme), its reader marked ours."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        inner = (
            aiormq.connection.TLSTransportFactory()
            if url.scheme == "amqps"
            else aiormq.connection.TCPTransportFactory()
        )
        reader, writer = await inner.create(url, **kwargs)
        _ours.add(reader)
        return reader, writer


def _shortstr(data: bytes, offset: int) -> tuple[str, int]:
    end = offset + 1 + data[offset]
    return data[offset + 1 : end].decode("utf-8"), end


def decode_method(payload: bytes) -> Any:
    """The ``basic.deliver`` or ``basic.ack`` in a method frame's payload (class and
    method ids first), or None for any other method and anything unusual (a routing key
    that is not UTF-8, a short frame): pamqp and the frame guard decode those."""
    try:
        return _decode_method(payload)
    except (IndexError, struct.error, UnicodeDecodeError):
        return None


def _decode_method(payload: bytes) -> Any:
    kind = payload[:4]
    if kind == _DELIVER:
        consumer_tag, offset = _shortstr(payload, 4)
        delivery_tag = _I64_AT(payload, offset)[0]
        redelivered = bool(payload[offset + 8] & 1)
        exchange, offset = _shortstr(payload, offset + 9)
        routing_key, offset = _shortstr(payload, offset)
        if offset != len(payload):
            return None
        return deliver_frame(consumer_tag, delivery_tag, redelivered, exchange, routing_key)
    if kind == _ACK and len(payload) == 13:
        ack = Basic.Ack.__new__(Basic.Ack)
        ack.delivery_tag = _I64_AT(payload, 4)[0]
        ack.multiple = bool(payload[12] & 1)
        return ack
    return None


class FastFrameReceiver(aiormq.connection.FrameReceiver):
    """aiormq's frame receiver, faster for the connections that are ours (module doc)."""

    async def get_frame(self) -> aiormq.connection.ReceivedFrame:
        reader = self.reader
        if not self.started or reader not in _ours:
            return await super().get_frame()
        if reader.at_eof():
            del self.reader
            raise StopAsyncIteration
        async with self.lock:
            try:
                head = await reader.readexactly(7)
                frame_type, channel, size = _HEAD(head)
                rest = await reader.readexactly(size + 1)
            except asyncio.IncompleteReadError as e:
                raise AMQPConnectionError(
                    "Server connection unexpectedly closed. "
                    f"Read {len(e.partial)} bytes but {e.expected} bytes expected"
                ) from e
            except OSError as e:
                raise AMQPConnectionError(f"Server communication error: {e!r}") from e
        if rest[-1] == _FRAME_END:
            if frame_type == 3:
                return size + 8, channel, ContentBody(rest[:-1])
            if frame_type == 1 and (method := decode_method(rest[:-1])) is not None:
                return size + 8, channel, method
        try:
            return pamqp.frame.unmarshal(head + rest)
        except PAMQPException as e:
            raise aiormq.exceptions.InvalidFrameError(str(e)) from e


def install() -> None:
    """Let aiormq's connections use :class:`FastFrameReceiver` (which reads as aiormq
    does for any connection not opened by :class:`AgentTransportFactory`). Idempotent."""
    aiormq.connection.FrameReceiver = FastFrameReceiver  # type: ignore[misc]
