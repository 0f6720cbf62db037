"""The two places where the code and docs/wire-format.md disagreed (issue 18), on a real broker.

A raw AMQP client (aiormq, no amqp_agents on its side) plays the foreign implementer:
it sets exactly the properties it chooses, so "no priority" really is absent on the
wire, and it reads the answers and dead letters as they arrive.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
import pytest
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from amqp_agents import MessageQueue, wire
from amqp_agents.demo import ResearchAgent
from amqp_agents.senders import connection_user


@pytest.fixture
async def researcher(queue: MessageQueue) -> AsyncIterator[ResearchAgent]:
    """The demo's researcher, consuming its inbox in the test's namespace."""
    agent = ResearchAgent("researcher", queue)
    await agent.start_consuming()
    yield agent
    await agent.stop()


@pytest.fixture
async def raw(
    amqp_url: str, connect_raw: Callable[[str], Awaitable[Any]]
) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    """A bare aiormq channel with publisher confirms: a client that is not ours (on
    ``memory://``, the channel under aio-pika's, which answers as aiormq's)."""
    if amqp_url.startswith("memory://"):
        plain = await connect_raw(amqp_url)
        try:
            underlay = await (await plain.channel()).get_underlay_channel()
            await underlay.confirm_delivery()
            yield underlay
        finally:
            await plain.close()
        return
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.confirm_delivery()
        yield channel
    finally:
        await connection.close()


async def take(channel: aiormq.abc.AbstractChannel, queue: str, n: int) -> list[DeliveredMessage]:
    """Consume ``queue`` until ``n`` deliveries arrived (each acked), within 10 s."""
    got: list[DeliveredMessage] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_message(message: DeliveredMessage) -> None:
        assert message.delivery_tag is not None
        await channel.basic_ack(message.delivery_tag)
        got.append(message)
        if len(got) == n and not done.done():
            done.set_result(None)

    consumer = await channel.basic_consume(queue, on_message)
    try:
        await asyncio.wait_for(done, 10)
    finally:
        assert consumer.consumer_tag is not None
        await channel.basic_cancel(consumer.consumer_tag)
    return got


async def test_a_task_without_priority_is_answered_at_normal_priority(
    researcher: ResearchAgent, raw: aiormq.abc.AbstractChannel, namespace: str, amqp_url: str
) -> None:
    """Mismatch 1: aio-pika reads a missing priority as 0; the contract says NORMAL (2)."""
    reply_queue = wire.reply_queue_name(namespace, "legacy", uuid.uuid4().hex)
    await raw.queue_declare(reply_queue, exclusive=True, auto_delete=True)
    await raw.queue_bind(reply_queue, wire.reply_exchange_name(namespace), reply_queue)
    task_id = str(uuid.uuid4())
    await raw.basic_publish(
        b'{"description": "message queues", "context": {}}',
        exchange=wire.exchange_name(namespace),
        routing_key="task.2.legacy.researcher",
        properties=Basic.Properties(
            content_type="application/json",
            message_id=task_id,
            message_type="task",
            reply_to=reply_queue,
            headers={"x-sender": "legacy"},
            user_id=connection_user(amqp_url),  # the user it connects as: authentic
        ),
        mandatory=True,
    )
    status, answer = await take(raw, reply_queue, 2)
    assert status.header.properties.message_type == "status"  # "searching sources"
    assert status.header.properties.priority == 2
    assert answer.header.properties.message_type == "result"
    assert answer.header.properties.correlation_id == task_id
    assert answer.header.properties.priority == 2
    assert answer.routing_key == reply_queue


@pytest.mark.parametrize(
    ("content_type", "body", "reason"),
    [
        ("text/plain", b"hello", "undecodable: content type 'text/plain'"),
        ("application/json", b"{not json", "undecodable: body is not JSON"),
    ],
)
async def test_an_undecodable_dead_letter_has_attempts_and_keeps_the_expiration(
    researcher: ResearchAgent,
    raw: aiormq.abc.AbstractChannel,
    namespace: str,
    content_type: str,
    body: bytes,
    reason: str,
) -> None:
    """Mismatch 2: x-dead-attempts is always there; the expiration survives in a header.

    Not as the AMQP property: the broker would drop the dead letter from ``{ns}.dead``
    when it ran out.
    """
    message_id = str(uuid.uuid4())
    await raw.basic_publish(
        body,
        exchange=wire.exchange_name(namespace),
        routing_key="task.2.legacy.researcher",
        properties=Basic.Properties(
            content_type=content_type,
            message_id=message_id,
            message_type="task",
            expiration="30000",
            headers={"x-sender": "legacy", "x-custom": "kept"},
        ),
        mandatory=True,
    )
    [dead] = await take(raw, wire.dead_queue_name(namespace), 1)
    props = dead.header.properties
    headers: dict[str, Any] = props.headers or {}
    assert (props.message_id, props.content_type, dead.body) == (message_id, content_type, body)
    assert str(headers[wire.H_DEAD_REASON]).startswith(reason)
    assert headers[wire.H_DEAD_AGENT] == "researcher"
    assert headers[wire.H_DEAD_ATTEMPTS] == 0
    assert headers[wire.H_DEAD_ORIGINAL_EXPIRATION] == "30000"
    assert props.expiration is None
    assert (headers["x-sender"], headers["x-custom"]) == ("legacy", "kept")


async def test_a_handler_that_failed_for_good_reports_its_attempts(
    queue: MessageQueue, raw_channel: aio_pika.abc.AbstractChannel, namespace: str
) -> None:
    """x-dead-attempts after the last retry is the number of handler runs (unchanged)."""
    from amqp_agents import MessagePassingAgent, RetryPolicy

    class Failing(MessagePassingAgent):
        async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
            raise ValueError("no sources")

    agent = Failing("researcher", queue, retry=RetryPolicy(max_attempts=2, delays_s=(0.05,)))
    await agent.start_consuming()
    try:
        sender = MessagePassingAgent("legacy", queue)
        await queue.ensure_inbox("legacy")
        await sender.send_task("researcher", "x", wait_for_result=False)
        dead = await raw_channel.get_queue(wire.dead_queue_name(namespace))
        async with asyncio.timeout(10), dead.iterator() as deliveries:
            async for incoming in deliveries:
                await incoming.ack()
                break
    finally:
        await agent.stop()
    headers = incoming.headers or {}
    assert headers[wire.H_DEAD_REASON] == "handler failed"
    assert headers[wire.H_DEAD_ATTEMPTS] == 2
    assert headers[wire.H_DEAD_ERROR_TYPE] == "ValueError"
