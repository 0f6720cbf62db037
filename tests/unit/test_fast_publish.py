"""The publish frames written directly are pamqp's, byte for byte."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from pamqp import frame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from amqp_agents import _fast_publish
from amqp_agents._properties import FastProperties


def pamqp_frames(
    channel: int, exchange: str, key: str, props: Basic.Properties, body: bytes, max_content: int
) -> bytes:
    frames: list[bytes] = [
        frame.marshal(Basic.Publish(exchange=exchange, routing_key=key, mandatory=True), channel),
        frame.marshal(ContentHeader(properties=props, body_size=len(body)), channel),
    ]
    for start in range(0, len(body), max_content):
        frames.append(frame.marshal(ContentBody(body[start : start + max_content]), channel))
    return b"".join(frames)


@pytest.mark.parametrize(
    ("exchange", "key", "body", "max_content"),
    [
        ("ns", "task.2.a.b", b'{"x": 1}', 131064),
        ("", "ns.reply.a.0f", b"", 131064),
        ("ns.replies", "r\u00e9ply", b"x" * 1000, 300),
        ("ns", "k", b"y" * 600, 300),
    ],
    ids=["small", "empty-body-default-exchange", "split-unicode-key", "exact-multiple"],
)
def test_the_frames_are_pamqps(exchange: str, key: str, body: bytes, max_content: int) -> None:
    props = FastProperties(
        content_type="application/json",
        headers={"x-sender": "a", "x-attempt": 2},
        delivery_mode=2,
        priority=2,
        message_id="m-1",
        user_id="guest",
    )
    ours = _fast_publish.method_frame(7, exchange, key) + _fast_publish.content_frames(
        7, props, body, max_content
    )
    assert ours == pamqp_frames(7, exchange, key, props, body, max_content)


def test_a_routing_key_over_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="255"):
        _fast_publish.method_frame(1, "ns", "k" * 256)


class StandInChannel:
    """What the publish uses of an aiormq channel (names as aiormq's)."""

    def __init__(self, write_queue_size: int) -> None:
        self._Channel__lock = asyncio.Lock()
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=write_queue_size)
        self.delivery_tag = 0
        self.confirmations: dict[int, asyncio.Future[Any]] = {}
        self.message_id_delivery_tag: dict[str, int] = {}
        self.number = 1
        self.max_content_size = 131064
        self.is_closed = False
        self.publisher_confirms = True

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def written(self) -> bytes:
        """The next frames the connection's writer takes off the queue."""
        return bytes((await self.write_queue.get()).payload)


def send(channel: StandInChannel, message_id: str) -> asyncio.Task[None]:
    props = FastProperties(message_id=message_id, delivery_mode=2)
    return asyncio.ensure_future(
        _fast_publish.publish(
            cast(Any, channel),
            message_id.encode(),
            exchange="ns",
            routing_key="k",
            properties=props,
            timeout=5,
        )
    )


async def test_publishes_waiting_for_room_go_out_in_order_and_tags_follow_the_frames() -> None:
    channel = StandInChannel(write_queue_size=1)
    sends = [send(channel, f"m{i}") for i in range(4)]
    await asyncio.sleep(0)
    late = send(channel, "m4")  # asks after the others: goes out after them
    written = [await channel.written() for _ in range(5)]
    assert [frames[-3:-1] for frames in written] == [f"m{i}".encode() for i in range(5)], (
        "the frames go out in the order the publishes asked"
    )
    tags = channel.message_id_delivery_tag
    by_tag = sorted(tags, key=lambda message_id: tags[message_id])
    assert by_tag == ["m0", "m1", "m2", "m3", "m4"], "tag k is the k-th frames written"
    for tag, confirmation in channel.confirmations.items():
        confirmation.set_result(tag)
    await asyncio.wait_for(asyncio.gather(*sends, late), 5)
    assert channel.message_id_delivery_tag == {}, "settled publishes forget their ids"


async def test_a_publish_cancelled_while_waiting_for_room_takes_no_tag() -> None:
    channel = StandInChannel(write_queue_size=1)
    first = send(channel, "first")
    waiting = send(channel, "waiting")
    await asyncio.sleep(0)
    assert channel.delivery_tag == 1 and channel.write_queue.full()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert channel.delivery_tag == 1
    assert list(channel.message_id_delivery_tag) == ["first"]
    await channel.written()
    after = send(channel, "after")
    await asyncio.sleep(0)
    assert channel.message_id_delivery_tag == {"first": 1, "after": 2}
    for confirmation in channel.confirmations.values():
        confirmation.set_result(None)
    await asyncio.wait_for(asyncio.gather(first, after), 5)
