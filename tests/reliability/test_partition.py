"""Proof that the suite can partition a private cluster (the tool scenario C6 needs).

The third node runs in a network namespace of its own (netns.py); cutting its veth
link cuts it off from the other two nodes and from this process. With
``pause_minority`` it must stop serving while the majority carries on, and a quorum
queue must keep every message confirmed before and during the partition. Raw
aio-pika: this checks the broker and the tool, not the library.

Needs root (a network namespace and a veth pair); without it the module is skipped
with the reason.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import aio_pika
import pytest
from cluster import PrivateCluster, record_timing
from netns import netns_supported, reap_orphans

from amqp_agents import AgentsError, Message, MessageQueue
from amqp_agents.connection import AgentConnection
from amqp_agents.topology import delete_namespace

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

NET_TICKTIME_S = 10
"""A silent node is declared down after 0.75-1.25 x this (Erlang's default is 60 s)."""
WAIT_S = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    reap_orphans()
    if (why := netns_supported()) is not None:
        pytest.skip(f"cannot create a network namespace with a veth link: {why}")
    with PrivateCluster(3, isolable_last=True, net_ticktime_s=NET_TICKTIME_S) as started:
        assert started.last_start_seconds is not None
        record_timing("partitionable_cluster_start_s", started.last_start_seconds)
        yield started


async def _publish(channel: aio_pika.abc.AbstractChannel, queue: str, bodies: range) -> None:
    for body in bodies:
        await channel.default_exchange.publish(
            aio_pika.Message(str(body).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue,
        )


async def _get_all(channel: aio_pika.abc.AbstractChannel, queue: str) -> list[int]:
    declared = await channel.declare_queue(queue, passive=True)
    got = []
    while (message := await declared.get(fail=False, timeout=WAIT_S)) is not None:
        got.append(int(message.body))
        await message.ack()
    return got


async def test_cut_node_pauses_and_the_majority_keeps_confirmed_messages(
    cluster: PrivateCluster,
) -> None:
    majority, isolated = cluster.nodes[0], cluster.nodes[2]
    name = f"qq-{uuid.uuid4().hex[:8]}"
    async with await aio_pika.connect(majority.url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        placement = await asyncio.to_thread(cluster.placement, name)
        assert isolated.node in placement.members and placement.leader != isolated.node
        await _publish(channel, name, range(300))

        cut_at = time.monotonic()
        await asyncio.to_thread(cluster.cut)
        try:
            await _publish(channel, name, range(300, 600))  # confirmed by 2 of 3 members
            await asyncio.to_thread(
                cluster.wait_until,
                lambda: cluster.running_nodes(via=majority) == {n.node for n in cluster.nodes[:2]},
                "the majority sees the cut node down",
                WAIT_S,
            )
            record_timing("partition_detected_s", time.monotonic() - cut_at)
            await asyncio.to_thread(
                cluster.wait_until,
                lambda: not cluster.serving(isolated),
                "the cut node pauses (pause_minority)",
                WAIT_S,
            )
            record_timing("minority_paused_s", time.monotonic() - cut_at)
            assert cluster.serving(majority) and cluster.serving(cluster.nodes[1])
            await _publish(channel, name, range(600, 900))
        finally:
            await asyncio.to_thread(cluster.heal)
        healed_at = time.monotonic()
        await asyncio.to_thread(cluster.wait_running, 3, WAIT_S)
        record_timing("partition_healed_s", time.monotonic() - healed_at)
        assert cluster.serving(isolated)

        assert sorted(await _get_all(channel, name)) == list(range(900))
        await channel.queue_delete(name)


HEARTBEAT_S = 2
"""The library's heartbeat here: a silent link is dropped after (2 + 1) x 3 = 9 s."""


async def test_message_queue_on_the_cut_node_moves_to_the_majority(
    cluster: PrivateCluster,
) -> None:
    """The library is connected to the node that gets cut off. A cut link sends no
    reset: only the heartbeat notices it. It then reconnects to a node of the majority,
    and a send succeeds. (The namespace's classic queues are on the first node, which
    stays in the majority.)"""
    majority, isolated = cluster.nodes[0], cluster.nodes[2]
    ns = f"rel-part-{uuid.uuid4().hex[:6]}"
    declarer = MessageQueue(cluster.url(order=[0]), namespace=ns)
    await declarer.connect()
    await declarer.ensure_inbox("sink")
    declared = set(declarer.declared_queues)
    await declarer.close()
    url = cluster.url(order=[2, 0, 1]) + f"?heartbeat={HEARTBEAT_S}"
    queue = MessageQueue(url, namespace=ns, publish_timeout_s=5)
    try:
        await queue.connect()
        connection = queue.connection
        assert isinstance(connection, AgentConnection) and connection.node_index == 0
        cut_at = time.monotonic()
        await asyncio.to_thread(cluster.cut)
        try:
            message = Message(sender="load", recipient="sink", content="after the cut")
            async with asyncio.timeout(WAIT_S):
                while True:
                    try:
                        await queue.send(message)
                        break
                    except AgentsError:
                        await asyncio.sleep(0.2)  # retry pacing while the link is dead
            record_timing("library_partition_failover_s", time.monotonic() - cut_at)
            assert connection.node_index != 0
            assert isolated.ip not in connection.node_url
        finally:
            await asyncio.to_thread(cluster.heal)
            await asyncio.to_thread(cluster.wait_running, 3, WAIT_S)
    finally:
        declared |= queue.declared_queues
        await queue.close()
        async with await aio_pika.connect(majority.url) as cleaning:
            channel = await cleaning.channel()
            await asyncio.wait_for(delete_namespace(channel, ns, sorted(declared)), WAIT_S)
