"""The publish frames written directly are pamqp's, byte for byte."""

from __future__ import annotations

import asyncio

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


async def test_a_publish_goes_straight_on_only_when_nobody_waits() -> None:
    lock: asyncio.Lock = asyncio.Lock()
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=4)
    assert _fast_publish.nobody_waits(lock, queue)

    await lock.acquire()
    waiter = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)  # the waiter is queued on the lock
    assert not _fast_publish.nobody_waits(lock, queue), "the lock is held"
    lock.release()
    assert not lock.locked()
    assert not _fast_publish.nobody_waits(lock, queue), "released, but handed to a waiter"
    await waiter
    lock.release()
    assert _fast_publish.nobody_waits(lock, queue)

    queue.put_nowait(1)
    assert _fast_publish.nobody_waits(lock, queue), "a quarter full"
    queue.put_nowait(2)
    assert not _fast_publish.nobody_waits(lock, queue), "half full"
    for item in (3, 4):
        queue.put_nowait(item)
    putter = asyncio.ensure_future(queue.put(5))
    await asyncio.sleep(0)
    assert not _fast_publish.nobody_waits(lock, queue), "a publish waits for room"
    queue.get_nowait()  # one slot free: the putter was woken, it has not put yet
    assert not _fast_publish.nobody_waits(lock, queue), "that slot is the putter's"
    queue.get_nowait()
    queue.get_nowait()
    assert _fast_publish.nobody_waits(lock, queue), "room for the putter and one more"
    await putter
    assert list(queue._queue) == [4, 5], "the putter got its turn"  # type: ignore[attr-defined]
