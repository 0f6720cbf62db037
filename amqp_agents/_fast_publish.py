"""A confirmed publish written as frames directly: the send hot path below aiormq.

aiormq's ``Channel.basic_publish`` builds pamqp objects for the method and content
header frames and marshals each through pamqp's generic encoder (about 25 us per
publish), then enters a countdown, two context managers and the channel's lock.
:func:`publish` writes the same bytes itself (``tests/unit/test_fast_publish.py``
holds them to pamqp's, byte for byte) and keeps aiormq's protocol: the channel's lock
from the delivery tag to the queued frames (publishes go out in the order they asked,
and tags follow frames), the confirmation future, the message id a ``basic.return``
is matched by. A channel that is not aiormq's (the memory broker's) gets aiormq's
method.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import aiormq.abc
from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp.commands import Basic

_FRAME_END = b"\xce"
_METHOD_HEAD = struct.Struct(">BHI").pack  # frame type 1, channel, payload size
_BASIC_PUBLISH = struct.pack(">HHH", 60, 40, 0)  # class, method, reserved-1
_HEADER_HEAD = struct.Struct(">BHIHHQ").pack  # type 2, channel, size, class 60, weight, body size
_BODY_HEAD = struct.Struct(">BHI").pack  # type 3, channel, size

_method_frames: dict[tuple[int, str, str], bytes] = {}
"""Method frames of (channel, exchange, routing key), mandatory: an agent sends to a
few keys again and again; the cache stays small (cleared when it grows)."""


def _shortstr(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 255:
        raise ValueError(f"{text[:40]!r}... is longer than 255 bytes")
    return bytes((len(data),)) + data


def method_frame(channel_number: int, exchange: str, routing_key: str) -> bytes:
    """The ``basic.publish`` frame (mandatory, not immediate)."""
    key = (channel_number, exchange, routing_key)
    frame = _method_frames.get(key)
    if frame is None:
        payload = _BASIC_PUBLISH + _shortstr(exchange) + _shortstr(routing_key) + b"\x01"
        frame = _METHOD_HEAD(1, channel_number, len(payload)) + payload + _FRAME_END
        if len(_method_frames) > 4096:
            _method_frames.clear()
        _method_frames[key] = frame
    return frame


def content_frames(
    channel_number: int, properties: Basic.Properties, body: bytes, max_content: int
) -> bytes:
    """The content header frame and the body frames (``max_content`` bytes each)."""
    flags_and_values = properties.marshal()
    header = _HEADER_HEAD(2, channel_number, 12 + len(flags_and_values), 60, 0, len(body))
    parts = [header, flags_and_values, _FRAME_END]
    for start in range(0, len(body), max_content):
        chunk = body[start : start + max_content]
        parts += (_BODY_HEAD(3, channel_number, len(chunk)), chunk, _FRAME_END)
    return b"".join(parts)


async def publish(
    channel: aiormq.abc.AbstractChannel,
    body: bytes,
    *,
    exchange: str,
    routing_key: str,
    properties: Basic.Properties,
    timeout: float,
) -> None:
    """Publish ``body`` with ``mandatory`` and wait for the broker's confirm, as
    ``channel.basic_publish(..., mandatory=True, wait=False)`` does; the same errors."""
    fast: Any = channel
    lock: asyncio.Lock | None = getattr(channel, "_Channel__lock", None)  # behind ``lock``
    if lock is None or not getattr(fast, "publisher_confirms", False) or not properties.message_id:
        # aiormq's Channel (its abstract interface lacks basic_publish's ``wait``).
        await fast.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
            timeout=timeout,
            wait=False,
        )
        return
    number = fast.number
    payload = method_frame(number, exchange, routing_key) + content_frames(
        number, properties, body, fast.max_content_size
    )
    message_id = properties.message_id
    async with asyncio.timeout(timeout):
        # aiormq's protocol: the channel's lock (first come, first served) is held from
        # the delivery tag to the frames being queued, so tags follow the frames' order.
        async with lock:
            if channel.is_closed:
                raise ChannelInvalidStateError(f"{channel!r} closed")
            # Waits its turn when the connection's 10-frame write queue is full; a
            # publish cancelled meanwhile has taken no tag and left nothing behind.
            await fast.write_queue.put(ChannelFrame(payload=payload, should_close=False))
            # Queued: the tag and its confirmation, before anything else can run (no
            # await between), so no confirm can arrive unregistered.
            fast.delivery_tag += 1
            tag = fast.delivery_tag
            confirmation: asyncio.Future[Any] = fast.create_future()
            fast.confirmations[tag] = confirmation
            fast.message_id_delivery_tag[message_id] = tag

            def forget_message_id(_: asyncio.Future[Any]) -> None:
                if fast.message_id_delivery_tag.get(message_id) == tag:
                    del fast.message_id_delivery_tag[message_id]

            confirmation.add_done_callback(forget_message_id)
        await confirmation
