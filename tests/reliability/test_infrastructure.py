"""Proof that the fault-injection tools work, against a real private RabbitMQ node.

Each test causes one fault with :class:`PrivateBroker` or :class:`TCPProxy` and checks
what an aio-pika client actually sees, so the suite built on these tools can trust
them. No test sleeps to synchronise: each awaits an event, or polls a condition,
under a deadline.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from pamqp.commands import Basic
from private_broker import PrivateBroker
from tcp_proxy import TCPProxy

pytestmark = pytest.mark.reliability

#: Short enough for a test to see it fire; the other tests ack at once.
CONSUMER_TIMEOUT_MS = 3000
PRIVATE_BROKER_OPTIONS: dict[str, Any] = {"consumer_timeout_ms": CONSUMER_TIMEOUT_MS}


class Closed:
    """Records when a connection or channel closes, and why."""

    def __init__(self, target: AbstractConnection | AbstractChannel) -> None:
        self.event = asyncio.Event()
        self.exc: BaseException | None = None
        self.at: float | None = None
        target.close_callbacks.add(self._on_close)

    def _on_close(self, _sender: object, exc: BaseException | None = None) -> None:
        self.exc = exc
        self.at = time.monotonic()
        self.event.set()

    async def wait(self, timeout: float) -> BaseException | None:
        await asyncio.wait_for(self.event.wait(), timeout)
        return self.exc


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _confirmed_publish(
    channel: AbstractChannel, routing_key: str, body: bytes, **kwargs: Any
) -> object:
    return await channel.default_exchange.publish(
        aio_pika.Message(body, **kwargs), routing_key=routing_key
    )


async def test_publish_and_consume_with_confirms_on_the_private_node(
    private_broker: PrivateBroker,
) -> None:
    assert private_broker.amqp_port != 5672
    assert private_broker.node.startswith("amqpagents-")
    queue_name = _name("infra-basic")
    connection = await aio_pika.connect(private_broker.url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(queue_name, auto_delete=True)

        confirm = await asyncio.wait_for(_confirmed_publish(channel, queue_name, b"hello"), 5)
        assert isinstance(confirm, Basic.Ack)
        # The message is on *this* node (rabbitmqctl -n NODE sees it), not the shared one.
        counts = await asyncio.to_thread(private_broker.list_queues)
        assert counts.get(queue_name) == 1

        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            if not received.done():
                received.set_result(message.body)

        await queue.consume(on_message)
        assert await asyncio.wait_for(received, 5) == b"hello"
    finally:
        await connection.close()


async def test_kill9_and_restart_keep_durable_persistent_confirmed_message(
    private_broker: PrivateBroker,
) -> None:
    durable_name, transient_name = _name("infra-durable"), _name("infra-transient")
    connection = await aio_pika.connect(private_broker.url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(durable_name, durable=True)
        await channel.declare_queue(transient_name, durable=False)
        confirm = await _confirmed_publish(
            channel, durable_name, b"survivor", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        assert isinstance(confirm, Basic.Ack)
        await _confirmed_publish(channel, transient_name, b"lost")
        # RabbitMQ 3.10 writes a queue's declaration to disk lazily: killed -9 within
        # about a second of it, the node can forget the queue (and its messages).
        await asyncio.to_thread(private_broker.eval, "mnesia:sync_log().")
        closed = Closed(connection)

        old_pid = await asyncio.to_thread(private_broker.kill9)
        # The client sees the socket drop (no AMQP close).
        await closed.wait(10)
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)

        await asyncio.to_thread(private_broker.restart_after_kill)
        assert private_broker.os_pid() != old_pid
    finally:
        await connection.close()
        if not private_broker.is_running():
            await asyncio.to_thread(private_broker.restart_after_kill)

    connection = await aio_pika.connect(private_broker.url, timeout=10)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(durable_name, durable=True, passive=True)
        message = await queue.get(timeout=5, fail=False)
        assert message is not None, "the persistent confirmed message did not survive kill -9"
        assert message.body == b"survivor"
        await message.ack()
        await queue.delete(if_unused=False, if_empty=False)
        # The control: a non-durable queue does not survive, so the node really restarted.
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(transient_name, passive=True)
    finally:
        await connection.close()


async def test_proxy_reset_all_closes_the_client_connection(
    private_broker: PrivateBroker,
) -> None:
    async with TCPProxy("127.0.0.1", private_broker.amqp_port) as proxy:
        connection = await aio_pika.connect(proxy.url_for(private_broker.url), timeout=10)
        try:
            channel = await connection.channel()
            await channel.declare_queue(exclusive=True)  # traffic really flows
            await proxy.wait_for_connections(1, timeout=5)
            closed = Closed(connection)

            assert proxy.reset_all() == 1
            exc = await closed.wait(5)
            assert isinstance(exc, aiormq.exceptions.AMQPConnectionError), exc
            assert "reset" in str(exc).lower(), exc  # an RST, not a polite close
            await proxy.wait_for_connections(0, timeout=5)
        finally:
            await connection.close()

        # The proxy still serves new connections after a reset.
        again = await aio_pika.connect(proxy.url_for(private_broker.url), timeout=10)
        await again.close()


async def test_proxy_refuse_resets_new_connections_only(private_broker: PrivateBroker) -> None:
    async with TCPProxy("127.0.0.1", private_broker.amqp_port) as proxy:
        url = proxy.url_for(private_broker.url)
        survivor = await aio_pika.connect(url, timeout=10)
        try:
            proxy.refuse(True)
            with pytest.raises((aiormq.exceptions.AMQPConnectionError, ConnectionError)):
                await aio_pika.connect(url, timeout=5)
            # Connections made before refusing keep working.
            channel = await survivor.channel()
            await channel.declare_queue(exclusive=True)

            proxy.refuse(False)
            again = await aio_pika.connect(url, timeout=10)
            await again.close()
        finally:
            await survivor.close()


async def test_proxy_hold_is_noticed_through_heartbeats(private_broker: PrivateBroker) -> None:
    async with TCPProxy("127.0.0.1", private_broker.amqp_port) as proxy:
        url = proxy.url_for(private_broker.url) + "?heartbeat=2"
        connection = await aio_pika.connect(url, timeout=10)
        try:
            channel = await connection.channel()
            await channel.declare_queue(exclusive=True)
            closed = Closed(connection)

            proxy.hold()
            held_at = time.monotonic()
            await closed.wait(15)
            assert closed.at is not None
            noticed_after = closed.at - held_at
            # Not at once (nothing was closed), but within about 10 s (aiormq gives up
            # after (heartbeat + 1) * 3 s without a frame).
            assert 2.0 <= noticed_after <= 12.0, noticed_after
            # The proxy never dropped the link: the client gave up on its own.
            assert proxy.active_connections == 1
        finally:
            proxy.release()
            await connection.close()
        await proxy.wait_for_connections(0, timeout=10)


async def test_disk_alarm_blocks_publishers_until_cleared(private_broker: PrivateBroker) -> None:
    connection = await aio_pika.connect(private_broker.url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(exclusive=True)
        # Control: without an alarm a confirm arrives well within the 2 s used below.
        before = await asyncio.wait_for(_confirmed_publish(channel, queue.name, b"before"), 2)
        assert isinstance(before, Basic.Ack)

        await asyncio.to_thread(private_broker.trigger_disk_alarm)
        try:
            assert await asyncio.to_thread(private_broker.disk_alarm_active)
            during = asyncio.ensure_future(_confirmed_publish(channel, queue.name, b"during"))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(during), 2)
        finally:
            await asyncio.to_thread(private_broker.clear_disk_alarm)

        confirm = await asyncio.wait_for(during, 10)
        assert isinstance(confirm, Basic.Ack)
        counts = await asyncio.to_thread(private_broker.list_queues)
        assert counts[queue.name] == 2
    finally:
        await connection.close()


async def test_consumer_timeout_closes_the_channel_within_seconds(
    private_broker: PrivateBroker,
) -> None:
    queue_name = _name("infra-timeout")
    connection = await aio_pika.connect(private_broker.url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(queue_name, auto_delete=False)
        await _confirmed_publish(channel, queue_name, b"slow")
        closed = Closed(channel)
        delivered: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def never_ack(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if not delivered.done():
                delivered.set_result(time.monotonic())

        await queue.consume(never_ack)
        delivered_at = await asyncio.wait_for(delivered, 5)
        tick_s = private_broker.channel_tick_interval_ms / 1000
        exc = await closed.wait(CONSUMER_TIMEOUT_MS / 1000 + tick_s + 5)
        assert closed.at is not None
        assert isinstance(exc, aio_pika.exceptions.ChannelPreconditionFailed), exc
        assert "delivery acknowledgement" in str(exc)
        elapsed = closed.at - delivered_at
        assert CONSUMER_TIMEOUT_MS / 1000 - 0.5 <= elapsed <= CONSUMER_TIMEOUT_MS / 1000 + 3

        # The unacked message went back to the queue, marked redelivered.
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        message = await queue.get(timeout=5, fail=False)
        assert message is not None and message.redelivered
        await message.ack()
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()


async def test_users_permissions_and_forced_close(private_broker: PrivateBroker) -> None:
    user, password = _name("infra-user"), "s3cret"
    await asyncio.to_thread(private_broker.add_user, user, password)
    await asyncio.to_thread(private_broker.set_permissions, user, "^own-.*", ".*", ".*")
    await asyncio.to_thread(
        private_broker.set_topic_permissions, user, "amq.topic", "^allowed\\.", ".*"
    )
    url = f"amqp://{user}:{password}@127.0.0.1:{private_broker.amqp_port}/"
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel()
        await channel.declare_queue(_name("own"), exclusive=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await channel.declare_queue(_name("foreign"), exclusive=True)

        channel = await connection.channel(publisher_confirms=True)
        topic = await channel.get_exchange("amq.topic")
        await topic.publish(aio_pika.Message(b"ok"), routing_key="allowed.key")
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await topic.publish(aio_pika.Message(b"no"), routing_key="denied.key")

        closed = Closed(connection)
        await asyncio.to_thread(private_broker.close_all_connections, "infra test")
        exc = await closed.wait(10)
        assert "infra test" in str(exc)
    finally:
        await connection.close()

    await asyncio.to_thread(private_broker.delete_user, user)
    with pytest.raises(aiormq.exceptions.AMQPConnectionError):
        await aio_pika.connect(url, timeout=10)


async def test_stop_app_and_start_app(private_broker: PrivateBroker) -> None:
    connection = await aio_pika.connect(private_broker.url, timeout=10)
    closed = Closed(connection)
    try:
        await asyncio.to_thread(private_broker.stop_app)
        try:
            await closed.wait(10)
            assert private_broker.is_running()  # the VM stays up
            with pytest.raises((aiormq.exceptions.AMQPConnectionError, ConnectionError)):
                await aio_pika.connect(private_broker.url, timeout=5)
        finally:
            await asyncio.to_thread(private_broker.start_app)
    finally:
        await connection.close()
    again = await aio_pika.connect(private_broker.url, timeout=10)
    await again.close()
