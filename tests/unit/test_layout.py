"""The pure topology steps: what a configuration needs, and the plan against a broker."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from amqp_agents import wire
from amqp_agents.config import AgentsConfig, load_config
from amqp_agents.diagram import mermaid
from amqp_agents.layout import (
    BindingSpec,
    InboxOptions,
    Layout,
    NamespaceOptions,
    agent_layout,
    base_layout,
    inbox_layout,
    layout_of,
    retry_exchange_of,
    retry_layout,
    route_layout,
)
from amqp_agents.plan import Check, Observed, Status, format_arguments, plan
from amqp_agents.retry import RetryPolicy

EXAMPLE = Path(__file__).parents[2] / "config" / "agents.example.yaml"


@pytest.fixture
def example() -> AgentsConfig:
    return load_config(EXAMPLE, env={"AMQP_NAMESPACE": "ns"})


@pytest.mark.parametrize(
    ("max_attempts", "delays_s", "expected"),
    [
        (1, (), []),
        (2, (0.2, 1.0), [0.2]),
        (3, (0.2, 1.0), [0.2, 1.0]),
        (5, (1.0, 5.0), [1.0, 5.0]),  # the last delay repeats: one queue
        (3, (2.0, 2.0), [2.0]),
    ],
)
def test_retry_delays_are_those_the_agent_uses(
    max_attempts: int, delays_s: tuple[float, ...], expected: list[float]
) -> None:
    assert RetryPolicy(max_attempts, delays_s).distinct_delays() == expected


STREAMS = {"ns.history", "ns.cancels", "ns.cards"}
CLASSIC = NamespaceOptions(queue_type="classic")
QUORUM = NamespaceOptions(queue_type="quorum")


def with_queue_type(config: AgentsConfig, queue_type: str) -> AgentsConfig:
    broker = config.broker.model_copy(update={"queue_type": queue_type})
    return config.model_copy(update={"broker": broker})


def test_quorum_is_the_default_queue_type(example: AgentsConfig) -> None:
    assert example.broker.queue_type == "quorum" == NamespaceOptions().queue_type


def test_layout_of_the_example_in_classic_mode(example: AgentsConfig) -> None:
    layout = layout_of(with_queue_type(example, "classic"))
    assert [(e.name, e.type) for e in layout.exchanges] == [
        ("ns", "topic"),
        ("ns.dlx", "fanout"),
        ("ns.replies", "topic"),
        ("ns.cancels", "fanout"),  # cancel records, into the stream of that name
        ("ns.cards", "fanout"),  # agent cards, likewise
        ("ns.retry.researcher", "direct"),  # one per agent that retries
        ("ns.retry.writer", "direct"),
    ]
    assert [q.name for q in layout.queues] == [
        "ns.dead",
        "ns.history",
        "ns.cancels",
        "ns.cards",
        "ns.inbox.researcher",
        "ns.inbox.writer",
        "ns.inbox.coordinator",
        "ns.inbox.monitor",
        "ns.retry.researcher.1000ms",
        "ns.retry.researcher.5000ms",
        "ns.retry.writer.2000ms",
        "ns.topology",
    ]
    queues = {q.name: q.arguments for q in layout.queues}
    # The same arguments the agents declare with: a difference would be a conflict.
    classic: wire.QueueType = "classic"
    assert queues["ns.inbox.researcher"] == wire.inbox_arguments(
        "ns", max_length=10000, queue_type=classic
    )
    assert queues["ns.inbox.monitor"] == wire.inbox_arguments("ns", queue_type=classic)
    assert queues["ns.inbox.monitor"]["x-max-priority"] == 4
    assert queues["ns.retry.writer.2000ms"] == wire.retry_queue_arguments(
        "ns", "writer", 2.0, queue_type=classic
    )
    assert queues["ns.dead"] == {"x-queue-type": "classic"}
    assert queues["ns.history"] == wire.history_arguments(max_age="7D", max_bytes=1_000_000_000)
    bindings = set(layout.bindings)
    assert BindingSpec("ns.dlx", "ns.dead", "") in bindings
    assert BindingSpec("ns", "ns.inbox.writer", "*.*.*.writer") in bindings
    assert BindingSpec("ns", "ns.inbox.researcher", "task.*.*.-") in bindings
    # A sender prefix binds one key per known agent it names, never every routed message.
    assert BindingSpec("ns", "ns.inbox.coordinator", "*.*.writer.-") in bindings
    assert BindingSpec("ns", "ns.inbox.coordinator", "*.*.*.-") not in bindings
    assert BindingSpec("ns", "ns.history", "*.4.*.-") in bindings
    # Every reply (through ns.replies) is kept in history; retries reach their queue
    # through the agent's own exchange, under the queue's name.
    assert BindingSpec("ns.replies", "ns.history", "ns.reply.#") in bindings
    assert {b for b in bindings if b.exchange.startswith("ns.retry.")} == {
        BindingSpec(f"ns.retry.{agent}", queue, queue)
        for agent, queue in [
            ("researcher", "ns.retry.researcher.1000ms"),
            ("researcher", "ns.retry.researcher.5000ms"),
            ("writer", "ns.retry.writer.2000ms"),
        ]
    }
    assert len(bindings) == len(layout.bindings), "no repeats"
    assert "ns.topology" not in {q.name for q in layout.without_record().queues}


def test_layout_of_the_example_in_quorum_mode(example: AgentsConfig) -> None:
    layout = layout_of(example)
    queues = {q.name: q.arguments for q in layout.queues}
    assert [name for name in queues if ".inbox." in name] == [
        "ns.inbox.researcher.high",
        "ns.inbox.researcher",
        "ns.inbox.writer.high",
        "ns.inbox.writer",
        "ns.inbox.coordinator.high",
        "ns.inbox.coordinator",
        "ns.inbox.monitor.high",
        "ns.inbox.monitor",
    ]
    # Every durable queue but the streams (history, cancels, cards) is a quorum queue.
    assert {name: args["x-queue-type"] for name, args in queues.items()} == {
        name: "stream" if name in {"ns.history", "ns.cancels", "ns.cards"} else "quorum"
        for name in queues
    }
    assert queues["ns.inbox.researcher"] == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "ns.dlx",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 4,  # returns let pass: 5 deliveries
        "x-max-length": 10000,
    }
    assert "x-max-priority" not in queues["ns.inbox.monitor.high"]
    # A retry queue per lane leads back into that lane.
    assert queues["ns.retry.writer.high.2000ms"]["x-dead-letter-routing-key"] == (
        "ns.inbox.writer.high"
    )
    assert queues["ns.retry.writer.2000ms"]["x-dead-letter-routing-key"] == "ns.inbox.writer"
    bindings = {(b.queue, b.key) for b in layout.bindings if b.exchange == "ns"}
    own = {(q, k) for q, k in bindings if k.endswith(".writer")}
    assert own == {
        ("ns.inbox.writer.high", "*.4.*.writer"),
        ("ns.inbox.writer.high", "*.3.*.writer"),
        ("ns.inbox.writer", "*.2.*.writer"),
        ("ns.inbox.writer", "*.1.*.writer"),
    } | {
        ("ns.history", k) for k in ("*.4.*.writer", "*.3.*.writer", "*.2.*.writer", "*.1.*.writer")
    }
    # The route "priority:4" binds only the lane that takes priority 4.
    urgent = {(q, k) for q, k in bindings if k == "*.4.*.-" and q.startswith("ns.inbox.coord")}
    assert urgent == {("ns.inbox.coordinator.high", "*.4.*.-")}
    assert ("ns.history", "*.*.*.writer") not in bindings, "history: the lanes' keys only"


@pytest.mark.parametrize(
    ("key", "lane", "keys"),
    [
        ("*.*.*.w", wire.HIGH_LANE, ["*.4.*.w", "*.3.*.w"]),
        ("*.*.*.w", wire.NORMAL_LANE, ["*.2.*.w", "*.1.*.w"]),
        ("task.4.*.-", wire.HIGH_LANE, ["task.4.*.-"]),
        ("task.4.*.-", wire.NORMAL_LANE, []),
        ("task.1.bob.-", wire.NORMAL_LANE, ["task.1.bob.-"]),
    ],
)
def test_a_lane_is_bound_with_its_own_priority_words(
    key: str, lane: wire.Lane, keys: list[str]
) -> None:
    assert wire.lane_binding_keys(key, lane) == keys


# -- the pieces -------------------------------------------------------------------------


@pytest.mark.parametrize("options", [CLASSIC, QUORUM], ids=["classic", "quorum"])
def test_every_key_that_reaches_an_inbox_also_reaches_history(options: NamespaceOptions) -> None:
    """Addressed and routed traffic is in history: the inbox's and each route's key;
    and no other key, or a message no inbox takes would be confirmed into history."""
    history = wire.history_name("ns")
    pieces = [
        inbox_layout("ns", "writer", options),
        route_layout("ns", "task.*.*.-", ["a", "b"], options),
    ]
    for piece in pieces:
        inbox_keys = {b.key for b in piece.bindings if b.queue != history}
        history_keys = {b.key for b in piece.bindings if b.queue == history}
        assert inbox_keys == history_keys and inbox_keys


def test_a_route_binds_each_destination_once_and_history_once() -> None:
    route = route_layout("ns", "task.*.*.-", ["a", "b"], CLASSIC, pattern="type:task")
    assert [(b.queue, b.key) for b in route.bindings] == [
        ("ns.inbox.a", "task.*.*.-"),
        ("ns.inbox.b", "task.*.*.-"),
        ("ns.history", "task.*.*.-"),
    ]
    assert route.bindings[0].role == "route type:task"
    assert not route.exchanges and not route.queues, "a route declares nothing of its own"


def test_a_route_binds_each_lane_of_each_destination_with_its_words() -> None:
    route = route_layout("ns", "task.*.*.-", ["a"], QUORUM)
    assert [(b.queue, b.key) for b in route.bindings] == [
        ("ns.inbox.a.high", "task.4.*.-"),
        ("ns.inbox.a.high", "task.3.*.-"),
        ("ns.inbox.a", "task.2.*.-"),
        ("ns.inbox.a", "task.1.*.-"),
        ("ns.history", "task.4.*.-"),
        ("ns.history", "task.3.*.-"),
        ("ns.history", "task.2.*.-"),
        ("ns.history", "task.1.*.-"),
    ]


@pytest.mark.parametrize("options", [CLASSIC, QUORUM], ids=["classic", "quorum"])
def test_an_agent_is_its_inbox_and_the_retry_queues_its_policy_uses(
    options: NamespaceOptions,
) -> None:
    policy = RetryPolicy(max_attempts=4, delays_s=(1.0, 5.0))
    inbox = InboxOptions(max_length=5)
    assert agent_layout("ns", "w", options, inbox, retry=policy) == inbox_layout(
        "ns", "w", options, inbox
    ) + retry_layout("ns", "w", [1.0, 5.0], options)
    once = RetryPolicy(max_attempts=1)
    assert agent_layout("ns", "w", options, retry=once) == inbox_layout("ns", "w", options)


def test_namespace_options_set_the_history_stream() -> None:
    options = NamespaceOptions(history_max_age="12h", history_max_bytes=5_000, history_replicas=3)
    (history,) = (q for q in base_layout("ns", options).queues if q.name == "ns.history")
    assert history.arguments == wire.history_arguments(max_age="12h", max_bytes=5_000, replicas=3)
    assert history.arguments["x-initial-cluster-size"] == 3


def test_joined_layouts_keep_each_piece_once_in_first_order() -> None:
    inbox = inbox_layout("ns", "a")
    joined = base_layout("ns") + inbox + base_layout("ns") + inbox
    assert joined == base_layout("ns") + inbox
    assert [q.name for q in joined.queues] == [
        "ns.dead",
        "ns.history",
        "ns.cancels",
        "ns.cards",
        "ns.inbox.a.high",
        "ns.inbox.a",
    ]
    with pytest.raises(ValueError, match="cannot join"):
        _ = base_layout("ns") + base_layout("other")


@pytest.mark.parametrize(
    ("queue", "exchange"),
    [
        ("ns.retry.writer.200ms", "ns.retry.writer"),
        ("ns.retry.a-1.5000ms", "ns.retry.a-1"),
        ("ns.retry.writer.high.200ms", "ns.retry.writer"),
        ("ns.retry.writer.low.200ms", None),  # no such lane
        ("ns.inbox.writer", None),
        ("ns.retry.writer", None),
        ("ns.retry.writer.fast", None),
        ("other.retry.writer.200ms", None),
        ("ns.retry.ns.retry.x.1ms", None),  # agent ids have no dots
    ],
)
def test_retry_exchange_of_a_retry_queue(queue: str, exchange: str | None) -> None:
    assert retry_exchange_of("ns", queue) == exchange


def test_importing_the_broker_client_does_not_load_yaml() -> None:
    """Agents and the broker client never need the YAML layer (nor PyYAML)."""
    code = (
        "import sys, amqp_agents.queue, amqp_agents.topology, amqp_agents.layout;"
        " print(sorted(m for m in sys.modules"
        " if m == 'yaml' or m.startswith(('amqp_agents.config', 'yaml.'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def _observed(layout: Layout, status: Status, **overrides: Check) -> Observed:
    checks = {name: Check(status) for name in _names(layout)}
    checks.update({name.replace("__", "."): check for name, check in overrides.items()})
    return Observed(
        {e.name: checks[e.name] for e in layout.exchanges},
        {q.name: checks[q.name] for q in layout.queues},
        frozenset(layout.bindings) if status is Status.PRESENT else None,
    )


def _names(layout: Layout) -> list[str]:
    return [e.name for e in layout.exchanges] + [q.name for q in layout.queues]


def test_empty_broker_plans_everything(example: AgentsConfig) -> None:
    layout = layout_of(example)
    the_plan = plan(layout, _observed(layout, Status.MISSING))
    created = [s.name for s in the_plan.steps if s.action == "create"]
    assert created == _names(layout)
    assert [s.binding for s in the_plan.steps if s.action == "bind"] == list(layout.bindings)
    assert not the_plan.conflicts and not the_plan.nothing_to_do


def test_everything_present_and_recorded_is_nothing_to_do(example: AgentsConfig) -> None:
    layout = layout_of(example)
    the_plan = plan(layout, _observed(layout, Status.PRESENT))
    assert the_plan.steps == () and the_plan.nothing_to_do


def test_a_conflict_is_reported_with_the_brokers_words(example: AgentsConfig) -> None:
    layout = layout_of(example)
    detail = "PRECONDITION_FAILED - inequivalent arg 'x-max-length'"
    observed = _observed(
        layout, Status.PRESENT, ns__inbox__researcher=Check(Status.CONFLICT, detail)
    )
    the_plan = plan(layout, observed)
    assert [(s.kind, s.name, s.detail) for s in the_plan.conflicts] == [
        ("queue", "ns.inbox.researcher", detail)
    ]
    assert not the_plan.nothing_to_do
    # Bindings of a queue that is not as configured are not trusted from the record.
    assert {s.binding.queue for s in the_plan.changes if s.binding} == {"ns.inbox.researcher"}


def test_bindings_without_a_record_are_to_do(example: AgentsConfig) -> None:
    """AMQP cannot list bindings: without apply's record, they are not known to exist."""
    layout = layout_of(example)
    observed = _observed(layout, Status.PRESENT)
    no_record = Observed(observed.exchanges, observed.queues, None)
    assert [s.binding for s in plan(layout, no_record).changes] == list(layout.bindings)


def test_recorded_bindings_no_longer_configured_are_stale_not_removed(
    example: AgentsConfig,
) -> None:
    layout = layout_of(example)
    old = BindingSpec("ns", "ns.inbox.writer", "*.*.editor.-")
    present = _observed(layout, Status.PRESENT)
    observed = Observed(present.exchanges, present.queues, frozenset({*layout.bindings, old}))
    the_plan = plan(layout, observed)
    assert [(s.action, s.binding) for s in the_plan.steps] == [("stale", old)]
    assert the_plan.nothing_to_do, "stale bindings are reported, never changed"


def test_arguments_a_user_may_not_check_are_reported(example: AgentsConfig) -> None:
    layout = layout_of(example)
    detail = "arguments not checked: ACCESS_REFUSED"
    observed = _observed(layout, Status.PRESENT, ns__dead=Check(Status.PRESENT, detail))
    the_plan = plan(layout, observed)
    assert [(s.action, s.name, s.detail) for s in the_plan.steps] == [
        ("unchecked", "ns.dead", detail)
    ]
    assert the_plan.nothing_to_do


def test_format_arguments() -> None:
    arguments = {"x-max-length": 5, "x-queue-type": "stream"}
    assert format_arguments(arguments) == "stream, x-max-length=5"
    assert format_arguments({}) == "classic"


# -- the Mermaid diagram ----------------------------------------------------------------


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_graph_draws_every_queue_agent_and_route(example: AgentsConfig, queue_type: str) -> None:
    example = with_queue_type(example, queue_type)
    graph = mermaid(example)
    assert graph.startswith("flowchart LR\n")
    layout = layout_of(example).without_record()
    for queue in layout.queues:
        assert f'"{queue.name}' in graph, queue.name
    for exchange in layout.exchanges:
        assert f'"{exchange.name}<br/>' in graph, exchange.name
    for route in example.routes:
        # In quorum mode "priority:4" binds what "sender:writer*" binds on the
        # coordinator's HIGH lane already: one binding, drawn with the first route.
        subsumed = queue_type == "quorum" and route.pattern == "priority:4"
        assert subsumed or f"route {route.pattern}" in graph
    assert "ResearchAgent, concurrency 4" in graph
    assert '"coordinator<br/>external"' in graph
    assert 'route sender:writer*"' in graph, "a prefix route is exact: not drawn as filtered"


def test_graph_node_ids_and_labels_are_valid_mermaid(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(
        textwrap.dedent(
            """
            broker: {namespace: "odd.name-1"}
            agents:
              - {id: a-1, class: "amqp_agents.demo:ResearchAgent"}
            routes:
              - {pattern: "sender:a-*", destinations: [a-1]}
            """
        )
    )
    graph = mermaid(load_config(path, env={}))
    for line in graph.splitlines()[2:]:
        # Every statement starts with a plain id; names only ever appear in quotes.
        assert re.match(r"    n\d+[\[({ -]", line), line
        assert '"' in line or re.fullmatch(r"    n\d+ --> n\d+", line), line
    assert "odd.name-1.inbox.a-1" in graph


@pytest.mark.parametrize("queue_type", wire.QUEUE_TYPES)
def test_history_off_leaves_out_the_stream_and_every_binding_of_it(
    example: AgentsConfig, queue_type: wire.QueueType
) -> None:
    broker = example.broker.model_copy(update={"history": "off", "queue_type": queue_type})
    off = layout_of(example.model_copy(update={"broker": broker}))
    on = layout_of(
        example.model_copy(update={"broker": broker.model_copy(update={"history": "stream"})})
    )
    history = wire.history_name("ns")
    assert history in {q.name for q in on.queues}
    assert any(b.queue == history for b in on.bindings)
    assert history not in {q.name for q in off.queues}
    assert not [b for b in off.bindings if b.queue == history]
    assert {b for b in on.bindings if b.queue != history} == set(off.bindings)
    assert history not in mermaid(example.model_copy(update={"broker": broker}))


def test_history_off_route_and_inbox_pieces_bind_no_history() -> None:
    options = NamespaceOptions(history="off")
    pieces = (
        base_layout("ns", options)
        + inbox_layout("ns", "bob", options)
        + route_layout("ns", "*.*.notification.-", ["bob"], options)
    )
    assert wire.history_name("ns") not in {b.queue for b in pieces.bindings}
    assert wire.history_name("ns") not in {q.name for q in pieces.queues}
