"""`amqp-agents topology plan / apply / graph` against the real broker."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from amqp_agents import wire
from amqp_agents.config import load_config
from amqp_agents.diagram import mermaid
from amqp_agents.layout import layout_of
from amqp_agents.plan import plan
from amqp_agents.runner import broker_connection, prepare
from amqp_agents.topology import delete_namespace, inspect_layout

from .conftest import Run

pytestmark = pytest.mark.rabbitmq_only(
    reason="the CLI runs as a subprocess, which cannot reach the test's in-process broker"
)


async def broker_state(rabbitmqctl: str, namespace: str) -> dict[str, Any]:
    """Exchanges, queues (with arguments) and bindings of ``namespace``, as listed by the broker."""

    def listing(what: str, *columns: str) -> list[dict[str, Any]]:
        done = subprocess.run(
            [rabbitmqctl, "-q", what, *columns, "--formatter", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    def mine(name: str) -> bool:
        return name == namespace or name.startswith(f"{namespace}.")

    exchanges, queues, bindings = await asyncio.gather(
        asyncio.to_thread(listing, "list_exchanges", "name", "type", "durable"),
        asyncio.to_thread(listing, "list_queues", "name", "durable", "arguments"),
        asyncio.to_thread(
            listing, "list_bindings", "source_name", "destination_name", "routing_key"
        ),
    )
    return {
        "exchanges": sorted((e["name"], e["type"]) for e in exchanges if mine(e["name"])),
        "queues": sorted(json.dumps(q, sort_keys=True) for q in queues if mine(q["name"])),
        "bindings": sorted(
            (b["source_name"], b["destination_name"], b["routing_key"])
            for b in bindings
            if mine(b["destination_name"]) and b["source_name"]  # not the default exchange's
        ),
    }


async def test_apply_twice_changes_nothing_the_second_time(
    run_cli: Run, example_config: Path, namespace: str, amqp_url: str, rabbitmqctl: str
) -> None:
    config = load_config(example_config, env={"AMQP_URL": amqp_url, "AMQP_NAMESPACE": namespace})
    layout = layout_of(config)
    changes = len(layout.exchanges) + len(layout.queues) + len(layout.bindings)

    status, first = await run_cli("topology", "apply", str(example_config))
    assert status == 0, first
    lines = first.splitlines()
    assert lines[1] == f"[1/{changes}] created exchange {namespace}  (topic, agent traffic)"
    assert lines[-1].startswith(f"applied: {changes} change(s)")
    state = await broker_state(rabbitmqctl, namespace)
    # The broker has exactly the layout: the pure layout and the declarations agree.
    assert state["exchanges"] == sorted((e.name, e.type) for e in layout.exchanges)
    names = sorted(json.loads(q)["name"] for q in state["queues"])
    assert names == sorted(q.name for q in layout.queues)
    assert state["bindings"] == sorted((b.exchange, b.queue, b.key) for b in layout.bindings)

    status, second = await run_cli("topology", "apply", str(example_config))
    assert status == 0, second
    assert second.splitlines()[1:] == [
        f"nothing to do: {len(layout.exchanges)} exchanges, {len(layout.queues)} queues and"
        f" {len(layout.bindings)} bindings exist as configured"
    ]
    assert await broker_state(rabbitmqctl, namespace) == state

    status, planned = await run_cli("topology", "plan", str(example_config))
    assert (status, planned.splitlines()[1:]) == (0, second.splitlines()[1:])


async def test_agents_declare_what_apply_declared(
    run_cli: Run, example_config: Path, namespace: str, amqp_url: str, rabbitmqctl: str
) -> None:
    """Runtime declarations use the same arguments, actively and passively: no conflict,
    and nothing the layout does not have is left behind."""
    status, output = await run_cli("topology", "apply", str(example_config))
    assert status == 0, output
    applied = await broker_state(rabbitmqctl, namespace)
    env = {"AMQP_URL": amqp_url, "AMQP_NAMESPACE": namespace}
    for passive in ("false", "true"):
        config = load_config(example_config, env=env)
        config = config.model_copy(
            update={"broker": config.broker.model_copy(update={"passive": passive == "true"})}
        )
        runner = prepare(config)
        await runner.start()
        topology = await runner.queue.topology()
        for agent in runner.agents:
            for delay in agent.retry.delays_s:
                for lane in wire.LANES:  # the retry queue of each lane
                    await topology.declare_retry_queue(agent.id, delay, lane)
        await runner.stop()
        # A conflicting argument would have raised above; an extra or changed durable
        # entity (exclusive reply queues go with the connection) shows here.
        assert await broker_state(rabbitmqctl, namespace) == applied, f"passive={passive}"


async def test_plan_reports_a_conflicting_queue_and_apply_refuses(
    run_cli: Run,
    example_config: Path,
    namespace: str,
    raw_channel: aio_pika.abc.AbstractChannel,
) -> None:
    inbox = wire.inbox_name(namespace, "researcher")
    # Declared elsewhere with another limit than the file's 10000.
    await raw_channel.declare_queue(
        inbox, durable=True, arguments=wire.inbox_arguments(namespace, max_length=5)
    )
    status, output = await run_cli("topology", "plan", str(example_config))
    assert status == 2, output
    lines = output.splitlines()
    conflicts = [line for line in lines if line.startswith("CONFLICT")]
    assert len(conflicts) == 1
    assert conflicts[0].startswith(
        f"CONFLICT queue {inbox}: PRECONDITION_FAILED - inequivalent arg 'x-max-length'"
    )
    # The rest of the plan is still there.
    assert f"create   exchange {namespace}  (topic, agent traffic)" in lines
    assert any(line.startswith(f"create   queue {namespace}.inbox.writer") for line in lines)
    layout = layout_of(load_config(example_config, env={"AMQP_NAMESPACE": namespace}))
    creates = len(layout.exchanges) + len(layout.queues) - 1  # all but the conflict
    assert lines[-1] == f"plan: {creates} to create, {len(layout.bindings)} to bind, 1 conflict(s)"

    status, output = await run_cli("topology", "apply", str(example_config))
    assert status == 1
    assert output.splitlines()[1:] == [
        f"error: nothing applied: queue '{inbox}' exists with other arguments than"
        " the configuration's (see `amqp-agents topology plan`)"
    ]
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await raw_channel.declare_exchange(namespace, passive=True)


async def test_graph_is_mermaid(run_cli: Run, example_config: Path) -> None:
    status, output = await run_cli("topology", "graph", str(example_config))
    assert status == 0
    assert output.startswith("flowchart LR\n")
    assert "route type:task" in output


def graph_edges(graph: str) -> set[tuple[str, str]]:
    """``(from, to)`` names of every edge of a Mermaid graph drawn by ``mermaid``."""
    ids = dict(re.findall(r'^    (n\d+)(?:\{\{|\[\()"([^"<]+)', graph, re.MULTILINE))
    pairs = re.findall(r"^    (n\d+) .*?-->? (n\d+)$", graph, re.MULTILINE)
    pairs += re.findall(r"^    (n\d+) --> (n\d+)$", graph, re.MULTILINE)
    return {(ids[a], ids[b]) for a, b in pairs if a in ids and b in ids}


def queues_with_arguments(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Queue name -> arguments, from :func:`broker_state` (rabbitmqctl lists
    arguments as ``[name, type, value]`` triples)."""
    queues = (json.loads(q) for q in state["queues"])
    return {q["name"]: {name: value for name, _, value in q["arguments"]} for q in queues}


async def test_declare_plan_graph_and_delete_read_one_layout(
    example_config: Path, namespace: str, amqp_url: str, rabbitmqctl: str
) -> None:
    """The layout is defined once: the run-time path declares exactly layout_of's specs
    (arguments included), the plan finds them all as declared, the graph draws every
    exchange, queue and binding of them, and delete_namespace leaves none behind."""
    config = load_config(example_config, env={"AMQP_URL": amqp_url, "AMQP_NAMESPACE": namespace})
    layout = layout_of(config).without_record()  # the record is apply's, not the agents'

    # Declared by the run-time path: agents start (inboxes, routes), retries declare theirs.
    runner = prepare(config)
    await runner.start()
    try:
        topology = await runner.queue.topology()
        for agent in runner.agents:
            for delay in agent.retry.distinct_delays():
                for lane in wire.LANES:  # the retry queue of each lane
                    await topology.declare_retry_queue(agent.id, delay, lane)
        declared = sorted(runner.queue.declared_queues)
    finally:
        await runner.stop()
    state = await broker_state(rabbitmqctl, namespace)
    assert state["exchanges"] == sorted((e.name, e.type) for e in layout.exchanges)
    assert queues_with_arguments(state) == {q.name: dict(q.arguments) for q in layout.queues}
    assert state["bindings"] == sorted((b.exchange, b.queue, b.key) for b in layout.bindings)

    async with broker_connection(config, "test: plan") as connection:
        the_plan = plan(layout, await inspect_layout(connection, layout))
    # Every exchange and queue exists with the layout's arguments; only the bindings
    # are left to do, as AMQP cannot list them and nothing recorded them.
    assert {s.action for s in the_plan.steps} == {"bind"}
    assert [s.binding for s in the_plan.steps] == list(layout.bindings)

    graph = mermaid(config)
    for name in [e.name for e in layout.exchanges] + [q.name for q in layout.queues]:
        assert f'"{name}' in graph, name
    assert {(b.exchange, b.queue) for b in layout.bindings} <= graph_edges(graph)

    plain = await aio_pika.connect(amqp_url)
    try:
        channel = await plain.channel()
        await delete_namespace(channel, namespace, declared, layout=layout)
    finally:
        await plain.close()
    assert await broker_state(rabbitmqctl, namespace) == {
        "exchanges": [],
        "queues": [],
        "bindings": [],
    }


async def test_plan_reports_queues_of_the_other_type_and_that_classic_is_for_one_node(
    run_cli: Run,
    example_config: Path,
    namespace: str,
    raw_channel: aio_pika.abc.AbstractChannel,
) -> None:
    """A namespace that exists as classic, planned as quorum (the default): the plan
    names the queues of the other type and where the way to move is; planned as
    classic, it says classic is for a single node."""
    dead = wire.dead_queue_name(namespace)
    await raw_channel.declare_queue(dead, durable=True, arguments={"x-queue-type": "classic"})
    status, output = await run_cli("topology", "plan", str(example_config))
    assert status == 2, output
    assert f"note: {dead} exist with another queue type than this configuration's quorum" in (
        output
    )
    status, output = await run_cli(
        "topology", "plan", str(example_config), "--queue-type", "classic"
    )
    assert status == 0, output
    assert "classic queues live on one node" in output
