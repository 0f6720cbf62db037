"""Cluster scenarios C1-C6 of issue 10 and their negative control, counted like Jepsen.

One private three-node cluster (cluster.py) serves the module: ``pause_minority``,
``net_ticktime`` 10 s, its third node in a network namespace (netns.py) so that C6 can
cut it off. Each scenario sends N = 3,000 notifications through ``MessageQueue.send``
(8 concurrent senders that retry a send that raised a typed error: at-least-once) to
an agent, breaks the cluster, and lets the ledger judge (ledger.py): **lost**
(confirmed, neither handled nor dead-lettered), **duplicated**, **unexpected**, the
typed errors the sends raised (by type) and the **longest stall** (the longest gap
between consecutive confirms, or consecutive deliveries). Rows go to
results/latest.json, hence docs/reliability.md's table (report.py).

Every scenario takes the namespace's queue type through the public option
(``MessageQueue(queue_type=...)``). Quorum is what the scenarios must pass. Classic
C1 is the negative control: a classic inbox lives on one node, a publish routed to it
while that node is down is dropped but still confirmed (the history stream took it),
and the ledger must see the loss.

No test sleeps to synchronise: they await the ledger, a child process's lines, or the
cluster's state (polled through rabbitmqctl, which signals nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from cluster import PrivateCluster, record_timing
from cluster_rig import (
    HEARTBEAT_S,
    MakeClusterRig,
    client_node,
    persist_declarations,
    rigs,
)
from crash_loop import CrashLoop, watch_dead_letters
from ledger import Report, write_result
from netns import netns_supported, reap_orphans
from test_faults import (
    SINK,
    AgentProcess,
    Rig,
    drain,
    message_id,
    run_load,
    send_canary,
)

from amqp_agents import wire

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]

log = logging.getLogger(__name__)

N = 3000
NET_TICKTIME_S = 10
"""A silent node is declared down after 0.75-1.25 x this (Erlang's default is 60 s)."""
FAULT_RATE = 300.0
"""Sends per second around a node's death: the load lasts 10 s, so it spans the kill,
the failover and the node's restart."""
ROLLING_RATE = 25.0
"""Sends per second in C3: 120 s of load, longer than a rolling restart (21 s measured
on an idle machine, 46 s on a loaded one, 72 s and 94 s at a load average of 12 on
two cores), so every node's stop and start happens under traffic."""
SETTLE_S = 30.0
"""How long every confirmed message may take to be delivered once the load is done."""
CANARY_S = 5.0
WAIT_S = 120.0
DELIVERY_LIMIT = wire.DEFAULT_DELIVERY_LIMIT
"""The lanes' delivery limit: the library's default."""

QUORUM = "quorum"
"""The queue type the scenarios must pass on (the classic C1 is the negative control)."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    """The module's cluster; its last node is isolable when namespaces can be made."""
    reap_orphans()
    isolable = netns_supported() is None
    with PrivateCluster(3, isolable_last=isolable, net_ticktime_s=NET_TICKTIME_S) as started:
        assert started.last_start_seconds is not None
        record_timing("scenario_cluster_start_s", started.last_start_seconds)
        yield started


@pytest.fixture
async def whole_cluster(cluster: PrivateCluster) -> AsyncIterator[PrivateCluster]:
    """The cluster, brought back to three running nodes after each test."""
    yield cluster
    if cluster.link is not None:
        await asyncio.to_thread(cluster.heal)
    for node in cluster.nodes:
        if not node.is_running():
            await asyncio.to_thread(cluster.restart, node)
    await asyncio.to_thread(cluster.wait_running, len(cluster.nodes), WAIT_S)


@pytest.fixture
async def make_rig(
    whole_cluster: PrivateCluster, request: pytest.FixtureRequest
) -> AsyncIterator[MakeClusterRig]:
    async for factory in rigs(whole_cluster, request.node.name):
        yield factory


Inject = Callable[[], Awaitable[str]]
"""Breaks the cluster and returns once the fault is over, with a note on it."""


class Outcome(NamedTuple):
    report: Report
    agent_served_on: bool
    """The agent was still running when the load had been delivered (before the drain
    stopped it)."""


async def run_scenario(
    rig: Rig,
    cluster: PrivateCluster,
    inject: Inject,
    *,
    rate: float = FAULT_RATE,
    fault_after: int = N // 3,
    canary: bool = True,
    settle: bool = True,
) -> Outcome:
    """Load at ``rate``, ``inject`` after ``fault_after`` confirms, canary, drain, report.

    ``canary``: a message sent when the fault is over must be handled within
    ``CANARY_S``. ``settle=False`` (the negative control): do not wait for confirmed
    messages to be delivered, they may be lost. The stall is measured up to the drain.
    """
    load = asyncio.create_task(run_load(rig, rate=rate))
    canary_id = None
    try:
        await rig.ledger.wait_for(lambda: len(rig.ledger.confirms) >= fault_after, WAIT_S)
        rig.ledger.fault()
        note = await inject()
        rig.ledger.fault_over()
        if canary:
            canary_id = await send_canary(rig, deadline_s=CANARY_S)
        await asyncio.wait_for(load, 300)
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
    assert rig.ledger.fault_at is not None
    note += f"; hit after {rig.ledger.confirmed_before(rig.ledger.fault_at)} confirms"
    if settle:
        with contextlib.suppress(TimeoutError):  # the report counts what is missing
            await rig.ledger.wait_for(lambda: not rig.ledger.undelivered(), SETTLE_S)
    settled_at = time.monotonic()
    served_on = rig.agent.running
    if rig.agent.error is not None:
        note += f"; the agent stopped: {type(rig.agent.error).__name__}"
    await drain(rig, cluster.nodes[0], settle=False)
    report = record(rig.ledger.report(N, canary=canary_id, note=note, stall_until=settled_at))
    return Outcome(report, served_on)


def record(report: Report) -> Report:
    write_result(report)
    log.warning("%s", report.summary())
    return report


# -- C1: the inbox's node dies, the clients are elsewhere ------------------------------


async def c1_kill_inbox_leader(
    make_rig: MakeClusterRig, cluster: PrivateCluster, queue_type: str, name: str
) -> Outcome:
    """Inbox (lanes) declared through node 2, clients on node 1; node 2 killed -9 at
    one third of the load and started again at once."""
    rig = await make_rig(name, queue_type, inbox_via=1, clients=[0, 2, 1])
    lane = wire.inbox_name(rig.ns, SINK)
    leader = await asyncio.to_thread(cluster.leader_of, lane)
    assert leader is cluster.nodes[1], f"{lane} is led by {leader.node}"
    await persist_declarations(leader)

    async def inject() -> str:
        await asyncio.to_thread(cluster.kill9, leader)
        took = await asyncio.to_thread(cluster.restart, leader)
        return f"inbox leader killed -9, back after {took:.1f}s"

    control = queue_type == "classic"
    return await run_scenario(rig, cluster, inject, canary=not control, settle=not control)


@pytest.mark.parametrize("queue_type", [QUORUM])
async def test_c1_inbox_leader_killed_nothing_lost_agent_serves_on(
    make_rig: MakeClusterRig, whole_cluster: PrivateCluster, queue_type: str
) -> None:
    report, served_on = await c1_kill_inbox_leader(
        make_rig, whole_cluster, queue_type, f"C1-inbox-leader-kill9-{queue_type}"
    )
    assert report.lost == 0 and report.unexpected == 0, report.summary()
    assert served_on, report.note
    assert report.stall_s is not None and report.stall_s < 5.0, report.summary()
    assert report.canary_ms is not None, report.summary()


async def test_c1_negative_control_classic_inbox_loses_confirmed_messages(
    make_rig: MakeClusterRig, whole_cluster: PrivateCluster
) -> None:
    """C1 on a classic namespace: the checker must see loss."""
    report, _ = await c1_kill_inbox_leader(
        make_rig, whole_cluster, "classic", "C1-control-classic-inbox-kill9"
    )
    assert report.lost > 0, report.summary()
    assert report.unexpected == 0, report.summary()


# -- C2: the clients' node dies -------------------------------------------------------


@pytest.mark.parametrize("queue_type", [QUORUM])
async def test_c2_clients_node_killed_both_sides_move_nothing_lost(
    make_rig: MakeClusterRig, whole_cluster: PrivateCluster, queue_type: str
) -> None:
    """Sender and agent on node 1 (given the list 1, 2, 3), which also declared the
    whole namespace (its queues' leaders start there); node 1 killed -9 at one third
    of the load and started again at once."""
    cluster = whole_cluster
    rig = await make_rig(
        f"C2-client-node-kill9-{queue_type}", queue_type, inbox_via=0, clients=[0, 1, 2]
    )
    victim = cluster.nodes[0]
    assert client_node(rig.sender, cluster) == client_node(rig.receiver, cluster) == 0
    await persist_declarations(victim)

    async def inject() -> str:
        await asyncio.to_thread(cluster.kill9, victim)
        took = await asyncio.to_thread(cluster.restart, victim)
        return f"clients' node killed -9, back after {took:.1f}s"

    report, served_on = await run_scenario(rig, cluster, inject)
    assert report.lost == 0 and report.unexpected == 0, report.summary()
    assert client_node(rig.sender, cluster) != 0 and client_node(rig.receiver, cluster) != 0
    assert served_on, report.note
    assert report.stall_s is not None and report.stall_s < 10.0, report.summary()


# -- C3: rolling restart ----------------------------------------------------------------


@pytest.mark.parametrize("queue_type", [QUORUM])
async def test_c3_rolling_restart_under_traffic_nothing_lost(
    make_rig: MakeClusterRig, whole_cluster: PrivateCluster, queue_type: str
) -> None:
    """Each node in turn stopped cleanly and started again while messages flow."""
    cluster = whole_cluster
    rig = await make_rig(
        f"C3-rolling-restart-{queue_type}", queue_type, inbox_via=0, clients=[0, 1, 2]
    )

    async def inject() -> str:
        started = time.monotonic()
        for node in cluster.nodes:
            await asyncio.to_thread(cluster.stop, node)
            await asyncio.to_thread(cluster.restart, node)
        return f"each node stopped and started in turn ({time.monotonic() - started:.0f}s)"

    report, served_on = await run_scenario(
        rig, cluster, inject, rate=ROLLING_RATE, fault_after=N // 20
    )
    assert rig.ledger.fault_end is not None
    assert rig.ledger.confirmed_before(rig.ledger.fault_end) < N, "traffic ended before the restart"
    assert report.lost == 0 and report.unexpected == 0, report.summary()
    assert served_on, report.note


# -- C4: a new process while a node is down ------------------------------------------


@pytest.mark.parametrize("queue_type", [QUORUM])
async def test_c4_new_process_starts_and_serves_while_a_node_is_down(
    make_rig: MakeClusterRig, whole_cluster: PrivateCluster, queue_type: str, tmp_path: Path
) -> None:
    """The namespace was declared through node 1 (its queues' leaders start there);
    node 1 is killed -9; then an agent process starts, given the list beginning with
    node 1, and must serve N messages sent through the others."""
    cluster = whole_cluster
    rig = await make_rig(
        f"C4-start-with-a-node-down-{queue_type}",
        queue_type,
        inbox_via=0,
        clients=[0, 1, 2],
        start=False,
    )
    down = cluster.nodes[0]
    await persist_declarations(down)
    await asyncio.to_thread(cluster.kill9, down)
    rig.ledger.fault()
    process = AgentProcess(
        rig,
        cluster.url(order=[0, 1, 2]),
        tmp_path / "agent.log",
        dedup_window=0,
        extra_args=["--queue-type", queue_type],
    )
    try:
        started = time.monotonic()
        await process.start(timeout=WAIT_S)
        assert process.ready.is_set(), f"the process ended: {process.log_path.read_text()[-2000:]}"
        ready_s = time.monotonic() - started
        await run_load(rig)
        await rig.ledger.wait_for(lambda: not rig.ledger.undelivered(), SETTLE_S)
    except BaseException:
        await process.terminate()
        raise
    settled_at = time.monotonic()
    await drain(rig, cluster.nodes[1], stop=process.terminate, settle=False)
    report = record(
        rig.ledger.report(
            N,
            recovery_of="delivery",
            stall_until=settled_at,
            note=f"node 1 down; a new agent process ready in {ready_s:.1f}s, then the load",
        )
    )
    assert report.lost == 0 and report.unexpected == 0, report.summary()
    assert set(process.effects) >= set(rig.ledger.confirms), "not served by the new process"


# -- C5: a message that kills its agent's process ------------------------------------


@pytest.mark.parametrize("concurrency", [1, 16])
@pytest.mark.parametrize("queue_type", [QUORUM])
async def test_c5_message_killing_its_agent_is_dead_lettered_after_the_limit(
    make_rig: MakeClusterRig,
    whole_cluster: PrivateCluster,
    queue_type: str,
    concurrency: int,
    tmp_path: Path,
) -> None:
    """The handler ends the process (``os._exit``) whenever it gets one message (the
    poison); the test starts a new process each time. After the lanes' delivery limit
    the broker moves it to ``{ns}.dead`` with its reason; the messages after it are
    served.

    Every message a dying process holds unacknowledged comes back with its delivery
    count raised, the poison's neighbours too: with ``concurrency=1`` there are none;
    with 16, those that were in hand at every crash reach the limit with it (dead-
    lettered with the same reason, never lost; some were handled, their ack not sent).
    """
    cluster = whole_cluster
    suffix = "" if concurrency == 1 else f"-concurrency{concurrency}"
    rig = await make_rig(
        f"C5-poison-kills-agent-{queue_type}{suffix}",
        queue_type,
        inbox_via=0,
        clients=[0, 1, 2],
        start=False,
    )
    poison = message_id(rig, N // 3)
    loop = CrashLoop(
        lambda number: AgentProcess(
            rig,
            cluster.url(),
            tmp_path / f"agent{number}.log",
            dedup_window=0,
            concurrency=concurrency,
            work_ms=0 if concurrency == 1 else 10,
            extra_args=["--queue-type", queue_type, "--exit-on", poison],
        ),
        rig.ledger,
    )
    async with watch_dead_letters(cluster.nodes[0].url, rig.ns, rig.ledger) as reasons:
        running = asyncio.create_task(loop.run(start_timeout=WAIT_S))
        try:
            await run_load(rig)
            settled = asyncio.create_task(
                rig.ledger.wait_for(lambda: not rig.ledger.undelivered(), WAIT_S)
            )
            await asyncio.wait((settled, running), return_when=asyncio.FIRST_COMPLETED)
            if running.done():
                running.result()  # a process died otherwise: raise its failure
            await settled
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        settled_at = time.monotonic()
    await drain(rig, cluster.nodes[0], stop=loop.processes[-1].terminate, settle=False)
    deaths = loop.died_on(poison)
    dead = dict(rig.ledger.dead_letters)
    report = record(
        rig.ledger.report(
            N,
            stall_until=settled_at,
            note=(
                f"one message ends its agent's process (concurrency {concurrency}): "
                f"{deaths} processes died on it, then it and {len(dead) - 1} neighbours "
                f"dead-lettered ({', '.join(sorted(set(reasons.values())))}); "
                f"delivery limit {DELIVERY_LIMIT}"
            ),
        )
    )
    assert report.lost == 0 and report.unexpected == 0, report.summary()
    assert deaths == DELIVERY_LIMIT, report.note
    assert set(reasons.values()) == {"delivery_limit"} and poison in dead, reasons
    assert set(dead.values()) == {1}, dead
    assert len(dead) <= concurrency, report.note
    # Handled and dead-lettered: only what a process that died had handled but not yet
    # acknowledged (it came back, and reached the limit with the poison).
    crashed = set().union(*(process.effects for process in loop.processes[:-1]))
    assert rig.ledger.deliveries.keys() & dead.keys() <= crashed, "handled and dead-lettered"
    assert poison not in loop.processes[-1].started, "the poison reached the last process"


# -- C6: a network partition -------------------------------------------------------------


@pytest.mark.parametrize("queue_type", [QUORUM])
async def test_c6_node_cut_off_nothing_confirmed_lost(
    make_rig: MakeClusterRig, whole_cluster: PrivateCluster, queue_type: str
) -> None:
    """Node 3 (the namespace's queues were declared through it, the clients are on
    it, with ``?heartbeat=2``) is cut off from the others by taking its network link
    down; ``pause_minority`` pauses it; the link comes back once it has paused."""
    cluster = whole_cluster
    if cluster.link is None:
        pytest.skip(f"no network namespace here: {netns_supported()}")
    isolated = cluster.nodes[2]
    rig = await make_rig(
        f"C6-partition-{queue_type}", queue_type, inbox_via=2, clients=[2, 0, 1], heartbeat=True
    )
    assert client_node(rig.sender, cluster) == client_node(rig.receiver, cluster) == 2

    async def inject() -> str:
        cut_at = time.monotonic()
        await asyncio.to_thread(cluster.cut)
        try:
            await asyncio.to_thread(
                cluster.wait_until,
                lambda: not cluster.serving(isolated),
                "the cut node pauses (pause_minority)",
                WAIT_S,
            )
            paused_s = time.monotonic() - cut_at
        finally:
            await asyncio.to_thread(cluster.heal)
        await asyncio.to_thread(cluster.wait_running, len(cluster.nodes), WAIT_S)
        return (
            f"node 3 cut off, paused after {paused_s:.1f}s, healed; "
            f"clients moved (heartbeat {HEARTBEAT_S}s)"
        )

    report, served_on = await run_scenario(rig, cluster, inject)
    assert report.lost == 0 and report.unexpected == 0, report.summary()
    assert client_node(rig.sender, cluster) != 2 and client_node(rig.receiver, cluster) != 2
    assert served_on, report.note
