"""Proof that the private cluster works, and that the library moves between its nodes.

Three private nodes (tests/reliability/cluster.py), started once for the module. The
tests show what the cluster scenarios of issue 10 (C1-C6) will build on:

* the cluster forms, with three running nodes, seen alike from each node;
* a quorum queue keeps every confirmed message when its leader is killed -9 (raw
  aio-pika: the broker's guarantee, independent of this library);
* a ``MessageQueue`` given the node list reconnects to another node when its node is
  killed -9, its agent consumes again, and a ``send`` succeeds.

The timings (cluster start, quorum failover, library failover) are written to
results/cluster-timings.json.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import pytest
from cluster import PrivateCluster, record_timing
from private_broker import PrivateBroker

from amqp_agents import (
    AgentsError,
    InboxUnavailableError,
    Message,
    MessagePassingAgent,
    MessagePriority,
    MessageQueue,
    MessageType,
    wire,
)
from amqp_agents.connection import AgentConnection
from amqp_agents.topology import delete_namespace

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

WAIT_S = 60.0
"""Upper bound for anything awaited here; a failover measured above it is a failure."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with PrivateCluster(3) as started:
        assert started.last_start_seconds is not None
        record_timing("cluster_start_s", started.last_start_seconds)
        yield started


@pytest.fixture
async def whole_cluster(cluster: PrivateCluster) -> AsyncIterator[PrivateCluster]:
    """The cluster, brought back to three running nodes after a test that broke it."""
    yield cluster
    for node in cluster.nodes:
        if not node.is_running():
            await asyncio.to_thread(cluster.restart, node)
    await asyncio.to_thread(cluster.wait_running, len(cluster.nodes))


def test_cluster_forms_with_three_running_nodes(cluster: PrivateCluster) -> None:
    names = {node.node for node in cluster.nodes}
    assert len(names) == 3
    for node in cluster.nodes:
        assert cluster.running_nodes(via=node) == names, f"as {node.node} sees it"
    ports = {port for node in cluster.nodes for port in (node.amqp_port, node.dist_port)}
    assert len(ports) == 6 and not ports & {5672, 25672}
    assert {node.epmd_port for node in cluster.nodes} == {cluster.nodes[0].epmd_port} != {4369}


async def _publish_confirmed(
    channel: aio_pika.abc.AbstractChannel, queue: str, bodies: range
) -> None:
    for body in bodies:
        await channel.default_exchange.publish(
            aio_pika.Message(str(body).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue,
        )


async def _drain(channel: aio_pika.abc.AbstractChannel, queue: str, count: int) -> list[int]:
    """Consume ``count`` messages (acking each) and return their bodies."""
    got: list[int] = []
    done = asyncio.get_running_loop().create_future()
    declared = await channel.declare_queue(queue, passive=True)

    async def on_message(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
        got.append(int(incoming.body))
        await incoming.ack()
        if len(got) >= count and not done.done():
            done.set_result(None)

    tag = await declared.consume(on_message)
    try:
        await asyncio.wait_for(done, WAIT_S)
    finally:
        await declared.cancel(tag)
    return got


async def test_quorum_queue_keeps_confirmed_messages_when_its_leader_is_killed(
    whole_cluster: PrivateCluster,
) -> None:
    cluster = whole_cluster
    name = f"qq-{uuid.uuid4().hex[:8]}"
    # Declared through node 1: the leader starts there (client-local); the test then
    # publishes through a node that is not the leader, so its link outlives the kill.
    async with await aio_pika.connect(cluster.nodes[0].url) as declaring:
        channel = await declaring.channel()
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    placement = await asyncio.to_thread(cluster.placement, name)
    assert placement.type == "quorum" and len(placement.members) == 3
    leader = cluster.node(placement.leader)
    survivor = next(cluster.others(leader))
    async with await aio_pika.connect(survivor.url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await _publish_confirmed(channel, name, range(500))

        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill9, leader)
        await _publish_confirmed(channel, name, range(500, 501))
        record_timing("quorum_leader_failover_s", time.monotonic() - killed_at)
        await _publish_confirmed(channel, name, range(501, 1000))

        new_leader = (await asyncio.to_thread(cluster.placement, name)).leader
        assert new_leader != leader.node
        assert sorted(await _drain(channel, name, 1000)) == list(range(1000))

        await asyncio.to_thread(cluster.restart, leader)
        rejoined = await asyncio.to_thread(cluster.placement, name)
        assert leader.node in rejoined.members
        await channel.queue_delete(name)


async def test_rolling_restart_keeps_a_quorum_queue_and_the_cluster(
    whole_cluster: PrivateCluster,
) -> None:
    """Each node in turn is stopped cleanly and started again (the tool C3 needs): it
    rejoins, and the quorum queue keeps every confirmed message."""
    cluster = whole_cluster
    name = f"qq-{uuid.uuid4().hex[:8]}"
    async with await aio_pika.connect(cluster.nodes[0].url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        await _publish_confirmed(channel, name, range(300))
    started = time.monotonic()
    for node in cluster.nodes:
        await asyncio.to_thread(cluster.stop, node)
        assert not node.is_running()
        await asyncio.to_thread(cluster.restart, node)
        assert len(await asyncio.to_thread(cluster.running_nodes, node)) == 3
    record_timing("rolling_restart_s", time.monotonic() - started)
    async with await aio_pika.connect(cluster.nodes[0].url) as connection:
        channel = await connection.channel()
        assert sorted(await _drain(channel, name, 300)) == list(range(300))
        await channel.queue_delete(name)


class Collector(MessagePassingAgent):
    """An agent that resolves a future per notification it handles."""

    def __init__(self, agent_id: str, queue: MessageQueue, **kw: Any) -> None:
        super().__init__(agent_id, queue, **kw)
        self.handled: dict[str, asyncio.Future[float]] = {}
        self.on(MessageType.NOTIFICATION)(self._record)

    def expect(self, message_id: str) -> asyncio.Future[float]:
        return self.handled.setdefault(message_id, asyncio.get_running_loop().create_future())

    async def _record(self, message: Message) -> None:
        future = self.expect(message.id)
        if not future.done():
            future.set_result(time.monotonic())


async def _send_until_accepted(queue: MessageQueue, message: Message) -> int:
    """Send, retrying typed errors (the link is down while it moves); returns the
    number of attempts that raised."""
    failures = 0
    async with asyncio.timeout(WAIT_S):
        while True:
            try:
                await queue.send(message)
                return failures
            except AgentsError:
                failures += 1
                await asyncio.sleep(0.1)  # retry pacing, not synchronisation


async def test_message_queue_fails_over_to_another_node(whole_cluster: PrivateCluster) -> None:
    """The library's node is killed -9: it reconnects to the next node, its agent
    consumes again there, and a send succeeds.

    Setup: the namespace is declared through node 2 first, so every classic queue of it
    (the inbox, ``{ns}.dead``, the retry queues) lives on node 2; the library then
    connects with the list (node 1, node 2, node 3), lands on node 1, and node 1 is
    killed. A classic queue lives on one node only: had the inbox been on node 1, it
    would be down with it, and re-declaring it on reconnection would fail on every node
    until node 1 is back (issue 10 item 1: quorum lanes remove that condition).
    """
    cluster = whole_cluster
    client_node, home_node = cluster.nodes[0], cluster.nodes[1]
    ns = f"rel-cl-{uuid.uuid4().hex[:6]}"
    declarer = MessageQueue(cluster.url(order=[1]), namespace=ns)
    await declarer.connect()
    await declarer.ensure_inbox("sink")
    declared = set(declarer.declared_queues)
    await declarer.close()

    queue = MessageQueue(cluster.url(order=[0, 1, 2]), namespace=ns, publish_timeout_s=5)
    agent = Collector("sink", queue)
    try:
        await queue.connect()
        connection = queue.connection
        assert isinstance(connection, AgentConnection)
        assert connection.node_index == 0
        assert (await asyncio.to_thread(cluster.placement, wire.inbox_name(ns, "sink"))).leader == (
            home_node.node
        )
        await agent.start_consuming()
        before = Message(sender="load", recipient="sink", content="before")
        await queue.send(before)
        await asyncio.wait_for(agent.expect(before.id), WAIT_S)

        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill9, client_node)
        after = Message(sender="load", recipient="sink", content="after")
        failures = await _send_until_accepted(queue, after)
        sent_at = time.monotonic()
        handled_at = await asyncio.wait_for(agent.expect(after.id), WAIT_S)

        assert connection.node_index != 0
        assert connection.node_url.startswith("amqp://guest:***@127.0.0.1:")
        record_timing("library_failover_send_s", sent_at - killed_at)
        record_timing("library_failover_handled_s", handled_at - killed_at)
        record_timing("library_failover_send_errors", failures)
    finally:
        await agent.stop()
        declared |= queue.declared_queues
        await queue.close()
        await _delete(home_node, ns, declared)


class HeldWorker(MessagePassingAgent):
    """Answers each task once released; ``started`` is set when it holds one."""

    def __init__(self, agent_id: str, queue: MessageQueue) -> None:
        super().__init__(agent_id, queue)
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        self.started.set()
        await asyncio.wait_for(self.release.wait(), WAIT_S)
        return f"done {task}"


async def test_pending_send_task_ends_typed_and_the_next_one_completes(
    whole_cluster: PrivateCluster,
) -> None:
    """A requester's node is killed -9 while its task is being handled elsewhere: the
    pending ``send_task`` completes or raises a typed error (never hangs), and the
    next ``send_task``, made after the requester moved to another node, completes.

    The worker and every classic queue of the namespace are on node 2, as above; the
    requester's reply queue is on node 1, which is killed.
    """
    cluster = whole_cluster
    ns = f"rel-rpc-{uuid.uuid4().hex[:6]}"
    worker_queue = MessageQueue(cluster.url(order=[1]), namespace=ns)
    requester_queue = MessageQueue(cluster.url(order=[0, 1, 2]), namespace=ns)
    worker = HeldWorker("worker", worker_queue)
    requester = MessagePassingAgent("req", requester_queue)
    declared: set[str] = set()
    try:
        await worker_queue.connect()
        await worker.start_consuming()
        await requester_queue.connect()
        pending = await requester.send_task("worker", "first", wait_for_result=False, timeout=30)
        await asyncio.wait_for(worker.started.wait(), WAIT_S)

        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill9, cluster.nodes[0])
        worker.release.set()
        try:
            outcome: object = await asyncio.wait_for(pending.result(), WAIT_S)
        except AgentsError as exc:  # typed: the reply queue went with node 1
            outcome = exc
        record_timing("pending_task_outcome_s", time.monotonic() - killed_at)
        record_timing("pending_task_raised", isinstance(outcome, AgentsError))
        assert outcome == "done first" or isinstance(outcome, AgentsError)

        async with asyncio.timeout(WAIT_S):
            while True:  # retry pacing while the requester moves to another node
                try:
                    result = await requester.send_task("worker", "second", timeout=10)
                    break
                except AgentsError:
                    await asyncio.sleep(0.1)
        assert result == "done second"
        record_timing("next_task_after_kill_s", time.monotonic() - killed_at)
    finally:
        await worker.stop()
        for queue in (worker_queue, requester_queue):
            declared |= queue.declared_queues
            await queue.close()
        await _delete(cluster.nodes[1], ns, declared)


async def _delete(node: PrivateBroker, ns: str, queues: set[str]) -> None:
    async with await aio_pika.connect(node.url) as connection:
        channel = await connection.channel()
        await asyncio.wait_for(delete_namespace(channel, ns, sorted(queues)), WAIT_S)


def _drop_member(cluster: PrivateCluster, queue: str, node: PrivateBroker) -> None:
    """Remove ``node``'s replica of the quorum queue ``queue`` (vhost ``/``)."""
    name = "<<" + ",".join(str(b) for b in queue.encode()) + ">>"
    out = cluster.any_running().eval(
        f"rabbit_quorum_queue:delete_member(<<\"/\">>, {name}, '{node.node}')."
    )
    assert out == "ok", f"delete_member {queue} {node.node}: {out}"


def _lead_from(cluster: PrivateCluster, queue: str, node: PrivateBroker) -> None:
    """Make ``node``'s replica the leader of the quorum queue ``queue`` (vhost ``/``).

    Whether a lane without a majority refuses a publish at once depends on its leader:
    a stopped leader leaves no process to take the publish, and the channel nacks it; a
    leader that lives on without a majority takes it and never commits it, so only the
    publish timeout ends the wait. The test needs the first case every time, not when
    an election happens to go that way.
    """
    name = "<<" + ",".join(str(b) for b in queue.encode()) + ">>"
    out = cluster.any_running().eval(
        f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, {name})), '
        f"{{RaName, Leader}} = amqqueue:get_pid(Q), "
        f"ra:transfer_leadership({{RaName, Leader}}, {{RaName, '{node.node}'}})."
    )
    assert out in ("ok", "already_leader"), f"transfer_leadership {queue}: {out}"


def _led_from(cluster: PrivateCluster, queue: str, node: PrivateBroker) -> bool:
    return cluster.placement(queue).leader == node.node


async def test_a_lane_without_a_majority_refuses_the_send_typed_and_promptly(
    whole_cluster: PrivateCluster,
) -> None:
    """The agent's lanes have replicas on nodes 2 and 3 only, led from node 2; node 2
    stops, so no lane has a majority (nor a leader), while the cluster (nodes 1 and 3)
    has one and keeps serving. A ``send`` through node 1 then raises
    ``InboxUnavailableError`` (the broker's nack), well before its publish timeout, and
    nothing has the message. Node 2 back, sends go through again, and the refused
    message never reaches the agent.
    """
    cluster = whole_cluster
    member_gone = cluster.nodes[1]
    ns = f"rel-unav-{uuid.uuid4().hex[:6]}"
    timeout_s = 10.0
    queue = MessageQueue(
        cluster.url(order=[0, 2]), namespace=ns, publish_timeout_s=timeout_s, queue_type="quorum"
    )
    agent = Collector("sink", queue, concurrency=1)
    try:
        await queue.connect()
        await queue.ensure_inbox("sink")
        lanes = queue.inbox_queue_names("sink")
        for lane in lanes:
            await asyncio.to_thread(_drop_member, cluster, lane, cluster.nodes[0])
            placement = await asyncio.to_thread(cluster.placement, lane)
            assert sorted(placement.members) == sorted(n.node for n in cluster.nodes[1:])
            await asyncio.to_thread(_lead_from, cluster, lane, member_gone)
            led = functools.partial(_led_from, cluster, lane, member_gone)
            await asyncio.to_thread(cluster.wait_until, led, f"{lane} led from 2", WAIT_S)
        await asyncio.to_thread(cluster.stop, member_gone)

        refused = {
            priority: Message(sender="load", recipient="sink", priority=priority, content="no")
            for priority in (MessagePriority.NORMAL, MessagePriority.URGENT)  # both lanes
        }
        for message in refused.values():
            started = time.monotonic()
            with pytest.raises(InboxUnavailableError, match="no majority"):
                await queue.send(message)
            took = time.monotonic() - started
            record_timing(f"inbox_unavailable_{message.priority.name.lower()}_s", took)
            assert took < timeout_s / 2, f"refused after {took:.1f}s: a timeout, not a nack"

        await asyncio.to_thread(cluster.restart, member_gone)
        back = Message(sender="load", recipient="sink", content="back")
        failures = await _send_until_accepted(queue, back)  # while the lanes elect
        record_timing("inbox_unavailable_sends_refused_while_electing", failures)
        await agent.start_consuming()
        await asyncio.wait_for(agent.expect(back.id), WAIT_S)
        # One handler at a time, each lane in order: a refused NORMAL message the lane
        # had kept anyway would have come before ``back``; for URGENT, a marker after.
        marker = Message(sender="load", recipient="sink", priority=MessagePriority.URGENT)
        await queue.send(marker)
        await asyncio.wait_for(agent.expect(marker.id), WAIT_S)
        assert not {m.id for m in refused.values()} & agent.handled.keys()
    finally:
        await agent.stop()
        declared = set(queue.declared_queues)
        await queue.close()
        await _delete(cluster.nodes[0], ns, declared)
