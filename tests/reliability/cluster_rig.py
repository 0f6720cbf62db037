"""Rigs for the cluster scenarios (test_cluster_scenarios.py): a namespace placed on
chosen nodes of a :class:`PrivateCluster`, clients given the node list, and the
cleaning up after.

Where a queue lives decides what a node's death does to it, so a scenario says it: the
namespace's base (``{ns}.dead``, the history stream, ...) is declared through the
clients' first node, the agent's inbox through ``inbox_via``. A classic queue stays on
the node that declared it; a quorum queue's leader starts there (RabbitMQ 3.10 places
both "client-local"), with replicas on every node.

The load, the agent and the ledger are those of scenarios 1-12 (test_faults.py), so
both suites count alike.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aio_pika
from cluster import PrivateCluster
from ledger import Ledger
from private_broker import PrivateBroker
from test_faults import PERSIST_DECLARATIONS, SINK, Rig, SinkAgent

from amqp_agents import MessagePassingAgent, MessageQueue
from amqp_agents.connection import AgentConnection
from amqp_agents.topology import delete_namespace

__all__ = ["MakeClusterRig", "client_node", "persist_declarations", "rigs"]

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 3.0
HEARTBEAT_S = 2
"""Heartbeat of clients that must notice a node cut off by the network: a silent link
is dropped after (2 + 1) x 3 = 9 s (a cut node sends no reset)."""
AGENT_CONCURRENCY = 16


def client_node(queue: MessageQueue, cluster: PrivateCluster) -> int:
    """The index in ``cluster.nodes`` of the node ``queue`` is connected to now."""
    connection = queue.connection
    assert isinstance(connection, AgentConnection)
    port = connection.url.port
    assert port is not None
    return cluster.index_of_port(port)


async def persist_declarations(node: PrivateBroker) -> None:
    """Flush ``node``'s lazily written declarations before a ``kill -9`` of it
    (docs/reliability.md: a queue or first stream declared just before can be lost)."""
    await asyncio.to_thread(node.eval, PERSIST_DECLARATIONS)


MakeClusterRig = Callable[..., Awaitable[Rig]]


async def rigs(cluster: PrivateCluster, test_name: str) -> AsyncIterator[MakeClusterRig]:
    """A factory of rigs on ``cluster`` (the body of a fixture); stops, closes and
    deletes what it made, whatever the test left broken."""
    made: list[Rig] = []

    async def factory(
        name: str,
        queue_type: str,
        *,
        inbox_via: int,
        clients: Sequence[int],
        heartbeat: bool = False,
        start: bool = True,
        **queue_options: Any,
    ) -> Rig:
        """A rig named ``name``: base declared through node ``clients[0]``, the inbox
        through node ``inbox_via``, sender and receiver given the nodes ``clients`` in
        that order (``heartbeat``: with ``?heartbeat=HEARTBEAT_S``)."""
        ns = f"rel-{name}-{uuid.uuid4().hex[:6]}"
        options = {
            "publish_timeout_s": PUBLISH_TIMEOUT_S,
            "queue_type": queue_type,
            **queue_options,
        }
        for via, inbox in ((clients[0], False), (inbox_via, True)):
            url = cluster.url(order=[via])
            async with MessageQueue(url, namespace=ns, **options) as declarer:
                if inbox:
                    await declarer.ensure_inbox(SINK)
        url = cluster.url(order=clients) + (f"?heartbeat={HEARTBEAT_S}" if heartbeat else "")
        queues = []
        for role in ("sender", "receiver"):
            queue = MessageQueue(
                url, namespace=ns, connection_name=f"{test_name} {role}", **options
            )
            queues.append(queue)
            await queue.connect()
        ledger = Ledger(name)
        agent = SinkAgent(SINK, queues[1], ledger, concurrency=AGENT_CONCURRENCY)
        requester = MessagePassingAgent("req", queues[0])
        rig = Rig(name, ns, ledger, queues[0], queues[1], agent, requester)
        made.append(rig)
        if start:
            await agent.start_consuming()
        return rig

    yield factory
    for rig in made:
        await rig.agent.stop()
        await rig.sender.close()
        await rig.receiver.close()
        await delete_everything(cluster, rig.ns)


async def delete_everything(cluster: PrivateCluster, ns: str) -> None:
    """Delete every queue named ``{ns}.*`` (those of child processes and lanes too)
    and the namespace's exchanges."""
    node = cluster.any_running()
    try:
        listed = await asyncio.to_thread(node.list_queues)
        queues = sorted(name for name in listed if name.startswith(f"{ns}."))
        async with await aio_pika.connect(node.url, timeout=10) as connection:
            channel = await connection.channel()
            await asyncio.wait_for(delete_namespace(channel, ns, queues), 60)
    except Exception as exc:  # teardown: a leftover namespace must not fail the test
        log.warning("namespace %s not deleted: %r", ns, exc)
