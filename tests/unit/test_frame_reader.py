"""Our connections' frame reader decodes what aiormq's does, frame for frame."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq.connection
import pamqp.frame
import pytest
from pamqp.body import ContentBody
from pamqp.commands import Basic, Queue
from pamqp.header import ContentHeader

from amqp_agents import _frame_reader


def unvalidated(kind: type[Any], **fields: Any) -> Any:
    """A frame as a broker may send it (pamqp's constructor refuses some names)."""
    frame = object.__new__(kind)
    for name, value in fields.items():
        setattr(frame, name, value)
    return frame


FRAMES: list[Any] = [
    Basic.Deliver("ctag.1", 7, False, "ns", "task.2.a.b"),
    Basic.Deliver("", 2**63 - 1, True, "", ""),
    unvalidated(
        Basic.Deliver,
        consumer_tag="t\u00e9",
        delivery_tag=1,
        redelivered=True,
        exchange="ex.change",
        routing_key="k\u00e9y",
    ),
    Basic.Ack(5, False),
    Basic.Ack(9, True),
    Basic.Nack(3, True, False),
    ContentHeader(body_size=3, properties=Basic.Properties(message_id="m", priority=2)),
    ContentBody(b"abc"),
    Queue.DeclareOk("q", 1, 2),
    Basic.Return(312, "NO_ROUTE", "ns", "k"),
]


def stream_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def as_tuple(frame: Any) -> Any:
    if isinstance(frame, ContentBody):
        return ("body", frame.value)
    if isinstance(frame, ContentHeader):
        return ("header", frame.body_size, dict(frame.properties))
    return (frame.name, dict(frame))


async def read_all(reader: asyncio.StreamReader, receiver: Any) -> list[tuple[int, int, Any]]:
    receiver.started = True  # past the protocol header, as after the handshake
    frames = []
    for _ in FRAMES:
        weight, channel, frame = await receiver.get_frame()
        frames.append((weight, channel, as_tuple(frame)))
    return frames


async def test_every_frame_reads_as_aiormq_reads_it() -> None:
    data = b"".join(pamqp.frame.marshal(frame, 3) for frame in FRAMES)
    theirs = await read_all(reader := stream_of(data), aiormq.connection.FrameReceiver(reader))
    ours_reader = stream_of(data)
    _frame_reader._ours.add(ours_reader)
    ours = await read_all(ours_reader, _frame_reader.FastFrameReceiver(ours_reader))
    assert ours == theirs


@pytest.mark.parametrize("ours", [True, False], ids=["ours", "another-librarys"])
async def test_a_connection_cut_mid_frame_is_a_connection_error(ours: bool) -> None:
    data = pamqp.frame.marshal(Basic.Ack(1, False), 1)[:-3]
    reader = stream_of(data)
    if ours:
        _frame_reader._ours.add(reader)
    receiver = _frame_reader.FastFrameReceiver(reader)
    receiver.started = True
    with pytest.raises(aiormq.exceptions.AMQPConnectionError, match="unexpectedly closed"):
        await receiver.get_frame()


async def test_a_frame_without_its_end_marker_is_refused() -> None:
    data = bytearray(pamqp.frame.marshal(Basic.Ack(1, False), 1))
    data[-1] = 0
    reader = stream_of(bytes(data))
    _frame_reader._ours.add(reader)
    receiver = _frame_reader.FastFrameReceiver(reader)
    receiver.started = True
    with pytest.raises(aiormq.exceptions.InvalidFrameError):
        await receiver.get_frame()


@pytest.mark.parametrize(
    "payload",
    [
        # a routing key that is not UTF-8 (a client chose it): pamqp and the guard decide
        b"\x00\x3c\x00\x3c\x01t" + (1).to_bytes(8, "big") + b"\x00\x02ex\x02\xff\xfe",
        b"\x00\x3c\x00\x3c\x05ab",  # cut short
        b"\x00\x3c\x00\x50\x00",  # an ack cut short
        b"\x00\x32\x00\x0b",  # another method (queue.declare-ok)
    ],
    ids=["routing-key-not-utf8", "deliver-cut-short", "ack-cut-short", "other-method"],
)
def test_what_it_does_not_decode_goes_to_pamqp(payload: bytes) -> None:
    assert _frame_reader.decode_method(payload) is None
