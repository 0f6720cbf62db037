"""The delivery tap assembles its consumer's deliveries and passes on every other frame.

Frames are fed to the tap as aiormq's connection reader feeds a channel's queue; the
channel is a stand-in with a real ``asyncio.Queue`` (what the tap must forward to).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiormq.abc import DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from amqp_agents._delivery_tap import Delivery, DeliveryTap, FrameSwitch, deliver_frame

TAG = "history-scan-1"


class StandInChannel:
    """What the tap uses of an aiormq channel: its frame queue, is_closed, basic_ack."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.is_closed = False
        self.acks: list[tuple[int, bool]] = []
        self.confirmations: dict[int, Any] = {}
        self.confirmed: list[tuple[int, str]] = []

    def _confirm_delivery(self, tag: int, frame: Any) -> None:
        # aiormq's: settle the publish's confirmation future.
        if self.confirmations.pop(tag, None) is not None:
            self.confirmed.append((tag, type(frame).__name__))

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
    channel, _tap, got, errors = make_tap()
    assert isinstance(channel.frames, FrameSwitch), "the tap took the channel's queue"
    await feed(channel, delivery_frames(1, body, split=split) + delivery_frames(2, body[:5]))
    assert [(d.delivery_tag, d.routing_key, d.body) for d in got] == [
        (1, "rk1", body),
        (2, "rk2", body[:5]),
    ]
    assert got[0].header.properties.message_id == "m1"
    assert channel.frames.qsize() == 0 and not errors, "nothing of the tap's consumer was passed on"


async def test_other_frames_go_on_to_the_channel_in_order() -> None:
    channel, _tap, got, _ = make_tap()
    other = delivery_frames(7, b"other", consumer="someone-else")
    frames = [Basic.ConsumeOk(TAG), *other, *delivery_frames(1, b"mine"), Basic.CancelOk(TAG)]
    await feed(channel, frames)
    passed_on = [channel.frames.get_nowait()[1] for _ in range(channel.frames.qsize())]
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


def pending_publishes(channel: StandInChannel, *tags: int) -> None:
    channel.confirmations.update({tag: object() for tag in tags})


@pytest.mark.parametrize(
    ("frame", "settled"),
    [
        (Basic.Ack(delivery_tag=2), [(2, "Ack")]),
        (Basic.Nack(delivery_tag=2), [(2, "Nack")]),
        (Basic.Ack(delivery_tag=2, multiple=True), [(1, "Ack"), (2, "Ack")]),
    ],
    ids=["ack", "nack", "multiple-ack"],
)
async def test_a_confirm_with_nothing_queued_is_settled_in_the_readers_turn(
    frame: Any, settled: list[tuple[int, str]]
) -> None:
    channel = StandInChannel()
    switch = FrameSwitch.of(cast(Any, channel))
    pending_publishes(channel, 1, 2, 3)
    await feed(channel, [frame])
    assert channel.confirmed == settled
    assert switch.qsize() == 0
    assert sorted(channel.confirmations) == sorted({1, 2, 3} - {tag for tag, _ in settled})


async def test_a_confirm_behind_a_queued_return_waits_its_turn() -> None:
    """A mandatory publish that found no queue is returned, then confirmed: the channel
    must see the return first, or the send would pass for delivered."""
    channel = StandInChannel()
    switch = FrameSwitch.of(cast(Any, channel))
    pending_publishes(channel, 1)
    returned = [
        Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange="x", routing_key="k"),
        ContentHeader(body_size=1, properties=Basic.Properties(message_id="m1")),
        ContentBody(b"x"),
    ]
    ack = Basic.Ack(delivery_tag=1)
    await feed(channel, [*returned, ack])
    assert channel.confirmed == [], "not settled ahead of the return"
    assert [switch.get_nowait()[1] for _ in range(switch.qsize())] == [*returned, ack]


async def test_deliveries_of_several_consumers_go_to_their_own_callbacks() -> None:
    channel = StandInChannel()
    switch = FrameSwitch.of(cast(Any, channel))
    got: dict[str, list[int]] = {"a": [], "b": []}
    waited: list[int] = []

    async def later(tag: int) -> None:
        waited.append(tag)

    switch.register("a", lambda d: got["a"].append(d.delivery_tag))
    switch.register("b", lambda d: later(d.delivery_tag))
    frames = delivery_frames(1, b"1", "a") + delivery_frames(2, b"2", "b")
    await feed(channel, frames + delivery_frames(3, b"3", "a"))
    assert got["a"] == [1, 3] and waited == [2], "an awaitable result is awaited in turn"
    assert FrameSwitch.of(cast(Any, channel)) is switch, "one switch per channel"


async def test_a_failing_consumer_callback_is_logged_and_the_next_delivery_still_arrives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = StandInChannel()
    switch = FrameSwitch.of(cast(Any, channel))
    got: list[int] = []

    def handle(delivered: Delivery) -> None:
        if delivered.delivery_tag == 1:
            raise RuntimeError("boom")
        got.append(delivered.delivery_tag)

    switch.register("a", handle)
    await feed(channel, delivery_frames(1, b"1", "a") + delivery_frames(2, b"2", "a"))
    assert got == [2]
    assert "boom" in caplog.text


@pytest.mark.parametrize(
    ("expiration", "seconds"),
    [(None, None), ("30000", 30.0), ("1", 0.001), ("soon", None)],
)
def test_a_delivery_reads_its_properties_as_aio_pika_does(
    expiration: str | None, seconds: float | None
) -> None:
    properties = Basic.Properties(
        message_id="m",
        correlation_id="c",
        reply_to="r",
        message_type="task",
        priority=3,
        user_id="u",
        content_type="application/json",
        expiration=expiration,
    )
    deliver = Basic.Deliver("t", 9, True, "ex", "task.3.a.b")
    delivery = Delivery(cast(Any, None), deliver, ContentHeader(0, 1, properties), b"{}")
    assert (
        delivery.message_id,
        delivery.correlation_id,
        delivery.reply_to,
        delivery.type,
        delivery.priority,
        delivery.user_id,
        delivery.content_type,
        delivery.headers,
        delivery.delivery_tag,
        delivery.redelivered,
        delivery.exchange,
        delivery.routing_key,
    ) == ("m", "c", "r", "task", 3, "u", "application/json", {}, 9, True, "ex", "task.3.a.b")
    assert delivery.expiration == seconds


def test_a_delivery_without_priority_reads_as_priority_0_as_in_aio_pika() -> None:
    deliver = Basic.Deliver("t", 1, False, "ex", "k")
    delivery = Delivery(cast(Any, None), deliver, ContentHeader(0, 0, Basic.Properties()), b"")
    assert delivery.priority == 0


class FramelessChannel:
    """A channel without a frame queue (the memory broker's): aiormq's consumer path."""

    def __init__(self) -> None:
        self.consumers: dict[str, Any] = {}

    async def basic_consume(self, queue: str, callback: Any, **kwargs: Any) -> None:
        self.consumers[kwargs["consumer_tag"]] = callback


async def test_a_frameless_channels_deliveries_reach_the_callback_whatever_the_names() -> None:
    channel = FramelessChannel()
    got: list[Delivery] = []
    await FrameSwitch.of(cast(Any, channel)).consume("q", "tag", got.append)
    delivered = DeliveredMessage(
        # an exchange name pamqp's constructor refuses (the broker accepts it)
        delivery=deliver_frame("tag", 3, True, "\u00e9change des agents", "k"),
        header=ContentHeader(0, 2, Basic.Properties(message_id="m")),
        body=b"{}",
        channel=cast(Any, channel),
    )
    await channel.consumers["tag"](delivered)
    assert [(d.delivery_tag, d.redelivered, d.exchange, d.message_id) for d in got] == [
        (3, True, "\u00e9change des agents", "m")
    ]
