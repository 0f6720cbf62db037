"""A configuration as a Mermaid flowchart: agents, routes and the queues between them.

Pure. People would rather look than read: paste the output of ``amqp-agents topology
graph CONFIG`` into any Mermaid renderer (GitHub renders it in Markdown)::

    flowchart LR
        n1{{"agents<br/>agent traffic"}}
        n6[("agents.inbox.researcher<br/>max 10000")]
        n1 -- "to researcher" --> n6
        n1 -- "route type:task" --> n6
        n6 --> n12(["researcher<br/>ResearchAgent, concurrency 4"])
        ...

Every exchange, queue and binding drawn is one of :func:`amqp_agents.layout.layout_of`
(the apply record aside); the history stream's bindings from one exchange are drawn as
a single edge. Where a queue's messages go next (dead-lettering, a retry's expiry) is
read from its arguments. Only the agents themselves come from the configuration, and
the edges of a filtered route: it has no binding (its sender runs the filter and
addresses each copy by ``BCC``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import wire
from .config_schema import AgentsConfig, RouteConfig
from .layout import QueueSpec, layout_of


class _Ids:
    """Short node ids (``n1``, ``n2``...): AMQP names hold characters Mermaid ids cannot."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        return self._ids.setdefault(name, f"n{len(self._ids) + 1}")


def _label(*lines: str) -> str:
    text = "<br/>".join(lines)
    return '"' + text.replace('"', "#quot;") + '"'


def mermaid(config: AgentsConfig) -> str:
    """The Mermaid ``flowchart`` source of ``config``'s namespace (see module docstring)."""
    layout = layout_of(config).without_record()
    node = _Ids()
    lines = ["flowchart LR", "    classDef external stroke-dasharray: 5 5"]

    def add(text: str) -> None:
        lines.append(f"    {text}")

    for exchange in layout.exchanges:
        add(f"{node(exchange.name)}{{{{{_label(exchange.name, exchange.role)}}}}}")
    for queue in layout.queues:
        add(f"{node(queue.name)}[({_label(queue.name, *_queue_notes(queue))})]")
    notes = {f"route {route.pattern}": _route_notes(route) for route in config.routes}
    edges: dict[tuple[str, str, str], None] = {}
    for binding in layout.bindings:
        label = binding.role + notes.get(binding.role, "")
        edges[(binding.exchange, binding.queue, label)] = None
    ns, queue_type = layout.namespace, config.broker.queue_type
    for route in config.routes:
        if route.filter is not None:  # no binding: the sender addresses each copy (BCC)
            label = f"route {route.pattern}" + notes[f"route {route.pattern}"]
            for dest in route.destinations:
                for lane in wire.inbox_queue_names(ns, dest, queue_type):
                    edges[(wire.exchange_name(ns), lane, label)] = None
    for source, target, label in edges:
        arrow = f" -- {_label(label)} -->" if label else " -->"
        add(f"{node(source)}{arrow} {node(target)}")
    drawn = {queue.name for queue in layout.queues} | {e.name for e in layout.exchanges}
    for queue in layout.queues:
        target, why = _dead_letter_target(queue.arguments)
        if target in drawn:
            add(f"{node(queue.name)} -. {_label(why)} .-> {node(target)}")

    dlx, replies = wire.dead_letter_exchange_name(ns), wire.reply_exchange_name(ns)
    for agent in config.agents:
        cls = agent.class_path.rsplit(":", 1)[-1]
        agent_node = node("agent:" + agent.id)
        add(f"{agent_node}([{_label(agent.id, f'{cls}, concurrency {agent.concurrency}')}])")
        for inbox in wire.inbox_queue_names(ns, agent.id, queue_type):
            add(f"{node(inbox)} --> {agent_node}")
        add(f"{agent_node} -. {_label('gives up')} .-> {node(dlx)}")
        add(f"{agent_node} -- {_label('answers')} --> {node(replies)}")
        retries = wire.retry_exchange_name(ns, agent.id)
        if any(e.name == retries for e in layout.exchanges):
            add(f"{agent_node} -. {_label('failed')} .-> {node(retries)}")
    for agent_id in config.external_agents:
        agent_node = node("agent:" + agent_id)
        add(f"{agent_node}([{_label(agent_id, 'external')}]):::external")
        for inbox in wire.inbox_queue_names(ns, agent_id, queue_type):
            add(f"{node(inbox)} --> {agent_node}")
    return "\n".join(lines) + "\n"


def _queue_notes(queue: QueueSpec) -> list[str]:
    """What a reader wants to know of a queue's arguments: its limit, a stream's age."""
    arguments = queue.arguments
    if arguments.get("x-queue-type") == "stream":
        return [f"stream, {arguments.get('x-max-age', 'unlimited')}"]
    limit = arguments.get("x-max-length")
    return [] if limit is None or queue.role == "apply record" else [f"max {limit}"]


def _dead_letter_target(arguments: Mapping[str, Any]) -> tuple[str, str]:
    """Where the broker moves a queue's rejected or expired messages, and why."""
    exchange = arguments.get("x-dead-letter-exchange")
    if exchange == "" and "x-dead-letter-routing-key" in arguments:
        return str(arguments["x-dead-letter-routing-key"]), "TTL"
    return str(exchange or ""), "rejected, expired"


def _route_notes(route: RouteConfig) -> str:
    notes = [
        note
        for note, present in (
            ("filtered", route.filter is not None),
            ("transformed", route.transform is not None),
        )
        if present
    ]
    return f" ({', '.join(notes)})" if notes else ""
