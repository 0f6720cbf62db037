"""A configuration as a Mermaid flowchart: agents, routes and the queues between them.

Pure. People would rather look than read: paste the output of ``amqp-agents topology
graph CONFIG`` into any Mermaid renderer (GitHub renders it in Markdown)::

    flowchart LR
        n1{{"agents<br/>topic exchange"}}
        n3[("agents.inbox.researcher<br/>max 10000")]
        n1 -- "to researcher" --> n3
        n1 -- "route type:task" --> n3
        n3 --> n4(["researcher<br/>ResearchAgent, concurrency 4"])
        ...

Inbox, route and dead-letter bindings are drawn one edge each; the history stream's
bindings (one per inbox and per route) are drawn as a single edge.
"""

from __future__ import annotations

from . import wire
from .config import AgentsConfig
from .layout import retry_delays


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
    ns = config.broker.namespace
    node = _Ids()
    traffic, dlx = wire.exchange_name(ns), wire.dead_letter_exchange_name(ns)
    dead, history = wire.dead_queue_name(ns), wire.history_name(ns)
    lines = ["flowchart LR", "    classDef external stroke-dasharray: 5 5"]

    def add(text: str) -> None:
        lines.append(f"    {text}")

    add(f"{node(traffic)}{{{{{_label(traffic, 'topic exchange')}}}}}")
    add(f"{node(dlx)}{{{{{_label(dlx, 'dead letters')}}}}}")
    add(f"{node(dead)}[({_label(dead)})]")
    add(f"{node(history)}[({_label(history, 'stream, ' + config.broker.history_max_age)})]")
    add(f"{node(dlx)} --> {node(dead)}")
    add(f"{node(traffic)} -- {_label('all addressed and routed traffic')} --> {node(history)}")
    replies = wire.reply_exchange_name(ns)
    add(f"{node(replies)}{{{{{_label(replies, 'answers to reply queues')}}}}}")
    add(f"{node(replies)} -- {_label('every answer')} --> {node(history)}")

    limits = {agent.id: agent.inbox.max_length for agent in config.agents}
    for agent_id in [*limits, *config.external_agents]:
        inbox = wire.inbox_name(ns, agent_id)
        limit = limits.get(agent_id)
        add(f"{node(inbox)}[({_label(inbox, *([f'max {limit}'] if limit else []))})]")
        add(f"{node(traffic)} -- {_label('to ' + agent_id)} --> {node(inbox)}")
        add(f"{node(inbox)} -. {_label('rejected, expired')} .-> {node(dlx)}")

    for agent in config.agents:
        inbox = wire.inbox_name(ns, agent.id)
        cls = agent.class_path.rsplit(":", 1)[-1]
        agent_node = node("agent:" + agent.id)
        add(f"{agent_node}([{_label(agent.id, f'{cls}, concurrency {agent.concurrency}')}])")
        add(f"{node(inbox)} --> {agent_node}")
        add(f"{agent_node} -. {_label('gives up')} .-> {node(dlx)}")
        add(f"{agent_node} -- {_label('answers')} --> {node(replies)}")
        retry_exchange = wire.retry_exchange_name(ns, agent.id)
        delays = retry_delays(agent.retry)
        if delays:
            add(f"{node(retry_exchange)}{{{{{_label(retry_exchange, 'its retries')}}}}}")
            add(f"{agent_node} -. {_label('failed')} .-> {node(retry_exchange)}")
        for delay in delays:
            retry = wire.retry_queue_name(ns, agent.id, delay)
            add(f"{node(retry)}[({_label(retry)})]")
            add(f"{node(retry_exchange)} -. {_label(f'retry after {delay:g}s')} .-> {node(retry)}")
            add(f"{node(retry)} -. {_label('TTL')} .-> {node(inbox)}")
    for agent_id in config.external_agents:
        agent_node = node("agent:" + agent_id)
        add(f"{agent_node}([{_label(agent_id, 'external')}]):::external")
        add(f"{node(wire.inbox_name(ns, agent_id))} --> {agent_node}")

    for route in config.routes:
        notes = [
            note
            for note, present in (
                ("filtered", route.filter is not None),
                ("transformed", route.transform is not None),
            )
            if present
        ]
        text = f"route {route.pattern}" + (f" ({', '.join(notes)})" if notes else "")
        for dest in route.destinations:
            add(f"{node(traffic)} -- {_label(text)} --> {node(wire.inbox_name(ns, dest))}")

    return "\n".join(lines) + "\n"
