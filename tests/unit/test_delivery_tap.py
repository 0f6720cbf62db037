"""The delivery tap assembles its consumer's deliveries and passes on every other frame.

Frames are fed to the tap as aiormq's connection reader feeds a channel's queue; the
channel is a stand-in with a real ``asyncio.Queue`` (what the tap must forward to).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from amqp_agents._delivery_tap import Delivery, DeliveryTap

TAG = "history-scan-1"


class StandInChannel:
    """What the tap uses of an aiormq channel: its frame queue, is_closed, basic_ack."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.is_closed = False
        self.acks: list[tuple[int, bool]] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.acks.append((tag, multiple))


def delivery_frames(tag: int, body: bytes, consumer: str = TAG, split: int = 0) -> list[Any]:
    """The frames of one delivery; ``split`` > 0 cuts the body into frames that long."""
    parts = [body[i : i + split] for i in range(0, len(body), split)] if split else [body]
    return [
        Basic.Deliver(consumer_tag=consumer, delivery_tag=tag, routing_key=f"rk{tag}"),
        ContentHeader(body_size=len(body), properties=Basic.Properties(message_id=f"m{tag}")),
        *(ContentBody(part) for part in parts if part),
    ]


def make_tap() -> tuple[StandInChannel, DeliveryTap, list[Delivery], list[BaseException]]:
    channel = StandInChannel()
    got: list[Delivery] = []
    errors: list[BaseException] = []
    tap = DeliveryTap(cast(Any, channel), TAG, got.append, errors.append)
    return channel, tap, got, errors


async def feed(channel: StandInChannel, frames: list[Any]) -> None:
    for frame in frames:
        await channel.frames.put((1, frame))  # channel.frames is the tap now


@pytest.mark.parametrize(
    ("body", "split"),
    [(b'{"a": 1}', 0), (b"x" * 1000, 300), (b"", 0)],
    ids=["one-body-frame", "body-in-four-frames", "empty-body"],
)
async def test_its_consumers_deliveries_reach_the_callback_whole_and_in_order(
    body: bytes, split: int
) -> None:
    channel, tap, got, errors = make_tap()
    assert channel.frames is cast(Any, tap), "the tap took the channel's queue"
    await feed(channel, delivery_frames(1, body, split=split) + delivery_frames(2, body[:5]))
    assert [(d.delivery_tag, d.routing_key, d.body) for d in got] == [
        (1, "rk1", body),
        (2, "rk2", body[:5]),
    ]
    assert got[0].header.properties.message_id == "m1"
    assert tap.qsize() == 0 and not errors, "nothing of the tap's consumer was passed on"


async def test_other_frames_go_on_to_the_channel_in_order() -> None:
    channel, tap, got, _ = make_tap()
    other = delivery_frames(7, b"other", consumer="someone-else")
    frames = [Basic.ConsumeOk(TAG), *other, *delivery_frames(1, b"mine"), Basic.CancelOk(TAG)]
    await feed(channel, frames)
    passed_on = [tap.get_nowait()[1] for _ in range(tap.qsize())]
    assert passed_on == [frames[0], *other, frames[-1]]
    assert [d.body for d in got] == [b"mine"]


async def test_a_failing_callback_is_reported_once_and_never_reaches_the_reader() -> None:
    channel = StandInChannel()
    errors: list[BaseException] = []
    calls: list[int] = []

    def explode(delivered: Delivery) -> None:
        calls.append(delivered.delivery_tag)
        raise ValueError("bad entry")

    DeliveryTap(cast(Any, channel), TAG, explode, errors.append)
    await feed(channel, delivery_frames(1, b"a") + delivery_frames(2, b"b"))
    assert calls == [1], "after a failure the consumer's deliveries are dropped"
    assert [str(e) for e in errors] == ["bad entry"]


async def test_ack_through_sends_one_multiple_ack_after_the_callback() -> None:
    channel = StandInChannel()
    tap: DeliveryTap | None = None

    def ack_even(delivered: Delivery) -> None:
        assert tap is not None
        if delivered.delivery_tag % 2 == 0:
            tap.ack_through(delivered.delivery_tag)

    tap = DeliveryTap(cast(Any, channel), TAG, ack_even, lambda exc: None)
    for tag in range(1, 6):
        await feed(channel, delivery_frames(tag, b"x"))
    assert channel.acks == [(2, True), (4, True)]
