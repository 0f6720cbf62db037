"""The ``amqp-agents`` command line; the only module that prints or exits.

Every command has ``--help``. Errors are one line on stderr and exit status 1, never a
traceback (``--debug`` shows it). A configuration with several problems reports one
line per problem, each naming its place.

    demo | send | history            talk to a broker from the shell
    run CONFIG [--agent ID ...]      run the configured agents until SIGTERM/SIGINT
    topology plan|apply|graph CONFIG what the namespace needs; create it; draw it
    routes explain CONFIG ...        which routes take a message, and where it goes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aio_pika.abc import AbstractRobustConnection

from . import runner, wire
from .agent import MessagePassingAgent
from .config import AgentsConfig, build_router, load_config
from .connection import redact_url, resolve_url
from .demo import run_demo
from .diagram import mermaid
from .errors import AgentsError, ConfigError
from .layout import layout_of
from .message import Message, MessagePriority, MessageType
from .plan import Plan, Step, plan
from .queue import MessageQueue
from .topology import apply_layout, inspect_layout

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def format_timeline(messages: Sequence[Message]) -> str:
    """A conversation as readable lines, one per message.

    >>> print(format_timeline([Message(sender="a", recipient="b", content="hi",
    ...       timestamp=datetime(2026, 1, 1, 9, 30, tzinfo=UTC))]))  # doctest: +SKIP
    09:30:00.000  a            -> b            notification  NORMAL  "hi"
    """
    lines = []
    for m in messages:
        content = json.dumps(m.content, ensure_ascii=False)
        if len(content) > 70:
            content = content[:67] + "..."
        lines.append(
            f"{m.timestamp:%H:%M:%S.%f}"[:-3]
            + f"  {m.sender or '-':<12} -> {m.recipient or '(routed)':<12}"
            f" {m.type.value:<12} {m.priority.name:<7} {content}"
        )
    return "\n".join(lines)


def _broker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else the local broker)")
    parser.add_argument(
        "--namespace",
        default=os.environ.get("AMQP_AGENTS_NAMESPACE", "agents"),
        help="name prefix of exchanges and queues (default: %(default)s)",
    )
    parser.add_argument(
        "--passive",
        action="store_true",
        help="only check that exchanges and queues exist (users without configure permission)",
    )
    _queue_type_arg(parser, os.environ.get("AMQP_AGENTS_QUEUE_TYPE", wire.DEFAULT_QUEUE_TYPE))


def _queue_type_arg(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--queue-type",
        choices=wire.QUEUE_TYPES,
        default=default,
        help="quorum (replicated; for a cluster) or classic (a single node); every process"
        " of a namespace must use the same"
        + (" (default: %(default)s)" if default else " (default: the file's broker.queue_type)"),
    )


def _config(args: argparse.Namespace) -> AgentsConfig:
    """The configuration file, with ``--queue-type`` (if given) over its own."""
    config = load_config(args.config)
    if args.queue_type is None:
        return config
    broker = config.broker.model_copy(update={"queue_type": args.queue_type})
    return config.model_copy(update={"broker": broker})


def _queue(args: argparse.Namespace) -> MessageQueue:
    return MessageQueue(
        args.url,
        namespace=args.namespace,
        connection_name=f"amqp-agents {args.command}",
        passive=args.passive,
        queue_type=args.queue_type,
        # The sender owns the reply queue, so an agent user's permissions cover it.
        reply_owner=getattr(args, "sender", None),
    )


async def cmd_demo(args: argparse.Namespace) -> int:
    """Run the researcher/writer demo and print the result and the timeline."""
    async with _queue(args) as queue:
        print(f"Connected; namespace {queue.namespace!r}. Starting researcher and writer...")
        result = await run_demo(queue, timeout_s=args.timeout)
    print(f"\nResearch: {result.research}")
    print(f"Article:  {result.article}")
    print(f"\nConversation {result.conversation_id} (read back from history):")
    print(format_timeline(result.timeline))
    return 0


def _parse_content(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def cmd_send(args: argparse.Namespace) -> int:
    """Send a message, or a task and optionally wait for its result."""
    msg_type = MessageType(args.type)
    priority = MessagePriority[args.priority.upper()]
    content = _parse_content(args.content)
    async with _queue(args) as queue:
        if msg_type is MessageType.TASK:
            sender = MessagePassingAgent(args.sender, queue)
            outcome = await sender.send_task(
                args.to,
                content if isinstance(content, str) else json.dumps(content),
                wait_for_result=args.wait,
                timeout=args.timeout,
                priority=priority,
                on_status=lambda m: print(f"status: {json.dumps(m.content)}", flush=True),
            )
            if args.wait:
                print(json.dumps(outcome, ensure_ascii=False))
            else:
                print(f"sent task {outcome.message_id} to {args.to}")
            return 0
        message = Message(
            sender=args.sender,
            recipient=args.to or "",
            type=msg_type,
            priority=priority,
            content=content,
        )
        await queue.send(message)
        print(f"sent {msg_type.value} {message.id} to {args.to or '(routes)'}")
    return 0


async def cmd_history(args: argparse.Namespace) -> int:
    """Print a conversation or an agent's history as a timeline."""
    async with _queue(args) as queue:
        if args.conversation:
            messages = await queue.get_conversation(args.conversation)
        else:
            messages = await queue.get_agent_history(args.agent)
    if not messages:
        print("no messages in the retained history")
        return 0
    print(format_timeline(messages))
    return 0


# -- commands on a configuration file ---------------------------------------------------


async def cmd_run(args: argparse.Namespace) -> int:
    """Run the configured agents until SIGTERM/SIGINT, then drain and exit 0."""
    logging.getLogger(runner.__name__).setLevel(logging.INFO)
    config = _config(args)
    await runner.run(config, args.agent or (), drain_timeout_s=args.drain_timeout)
    return 0


async def _plan(config: AgentsConfig, connection: AbstractRobustConnection) -> Plan:
    """Inspect the broker on ``connection`` and plan the configuration's layout."""
    layout = layout_of(config)
    print(
        f"namespace {layout.namespace!r} on {redact_url(resolve_url(config.broker.secret_url()))}",
        flush=True,
    )
    return plan(layout, await inspect_layout(connection, layout, progress=_progress))


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        end = "\n" if done == total else ""
        print(f"\rchecking {done}/{total} exchanges and queues", end=end, file=sys.stderr)


def _describe(step: Step) -> str:
    if step.action == "conflict":
        return f"CONFLICT {step.kind} {step.name}: {step.detail}"
    what = step.name if step.kind == "binding" else f"{step.kind} {step.name}"
    return f"{step.action:<8} {what}  ({step.detail})"


def _queue_type_notes(config: AgentsConfig, the_plan: Plan) -> list[str]:
    """What the plan says about the queue type: classic is for one node; queues found
    of the other type."""
    notes = []
    if config.broker.queue_type == "classic":
        notes.append(
            "note: queue_type classic: classic queues live on one node; on a cluster a"
            " message confirmed into an inbox whose node fails is lost. Use quorum there"
            " (docs/deploy.md, Running on a cluster)."
        )
    if mismatched := the_plan.other_queue_type:
        names = ", ".join(step.name for step in mismatched[:3])
        more = f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else ""
        notes.append(
            f"note: {names}{more} exist with another queue type than this configuration's"
            f" {config.broker.queue_type}: docs/deploy.md says how to move a namespace"
            " from classic to quorum."
        )
    return notes


def _summary(the_plan: Plan) -> str:
    layout = the_plan.layout
    return (
        f"{len(layout.exchanges)} exchanges, {len(layout.queues)} queues and"
        f" {len(layout.bindings)} bindings exist as configured"
    )


async def cmd_topology_plan(args: argparse.Namespace) -> int:
    """Show what `topology apply` would create and what conflicts; exit 2 on conflicts."""
    config = _config(args)
    async with runner.broker_connection(config, "amqp-agents topology plan") as connection:
        the_plan = await _plan(config, connection)
    for step in the_plan.steps:
        print(_describe(step))
    for line in _queue_type_notes(config, the_plan):
        print(line)
    if the_plan.nothing_to_do:
        print(f"nothing to do: {_summary(the_plan)}")
        return 0
    creates = sum(1 for s in the_plan.steps if s.action == "create")
    binds = sum(1 for s in the_plan.steps if s.action == "bind")
    conflicts = len(the_plan.conflicts)
    print(f"plan: {creates} to create, {binds} to bind, {conflicts} conflict(s)")
    return 2 if conflicts else 0


async def cmd_topology_apply(args: argparse.Namespace) -> int:
    """Declare what the configuration needs; idempotent."""
    config = _config(args)
    async with runner.broker_connection(config, "amqp-agents topology apply") as connection:
        the_plan = await _plan(config, connection)
        total = len(the_plan.changes)
        done = 0

        def on_step(step: Step) -> None:
            nonlocal done
            done += 1
            what = "bound" if step.kind == "binding" else f"created {step.kind}"
            print(f"[{done}/{total}] {what} {step.name}  ({step.detail})", flush=True)

        await apply_layout(connection, the_plan, on_step=on_step)
    if total == 0:
        print(f"nothing to do: {_summary(the_plan)}")
    else:
        print(f"applied: {total} change(s); {_summary(the_plan)}")
    return 0


async def cmd_topology_graph(args: argparse.Namespace) -> int:
    """Print the configuration as a Mermaid flowchart."""
    print(mermaid(_config(args)), end="")
    return 0


_PRIORITIES = {
    **{p.name.lower(): p for p in MessagePriority},
    **{str(int(p)): p for p in MessagePriority},
}


async def cmd_routes_explain(args: argparse.Namespace) -> int:
    """Show which routes take a message without recipient, and where it goes."""
    config = load_config(args.config)
    if not config.routes:
        print("the file has no routes: a message without recipient goes nowhere")
        return 0
    router = build_router(config)
    try:
        metadata = json.loads(args.metadata)
    except ValueError as exc:
        raise ConfigError(f"--metadata is not JSON: {exc}") from None
    message = Message(
        sender=args.sender,
        type=MessageType(args.type),
        priority=_PRIORITIES[args.priority.lower()],
        content=_parse_content(args.content),
        metadata=metadata if isinstance(metadata, dict) else {},
    )
    print(
        f"{message.type.value} from {message.sender or '(unknown sender)'},"
        f" priority {int(message.priority)} ({message.priority.name.lower()}),"
        f" no recipient: routing key {wire.routing_key(message)}"
    )
    verdicts = router.explain(message)
    for i, verdict in enumerate(verdicts):
        route = config.routes[i]
        if not verdict.matches:
            outcome = "no match"
        elif verdict.filter_error:
            outcome = f"match, but filter {route.filter} raised {verdict.filter_error}"
        elif verdict.filtered_out:
            outcome = f"match, filtered out by {route.filter}"
        else:
            kept = f", kept by {route.filter}" if route.filter else ""
            changed = f", transformed by {route.transform}" if route.transform else ""
            outcome = f"match{kept}{changed} -> {', '.join(verdict.destinations)}"
        print(f"  routes[{i}]  {verdict.pattern:<20} {outcome}")
    # As get_destinations: route order, then destination order, each agent once.
    destinations = list(dict.fromkeys(d for v in verdicts if v.takes for d in v.destinations))
    if any(v.filter_error for v in verdicts):
        print("goes to: unknown (a filter raised: sending it raises that error)")
    elif destinations:
        print(f"goes to: {', '.join(destinations)}")
    else:
        print("goes to: nobody (sending it raises NoRouteError)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="amqp-agents", description="Agents that talk to each other through RabbitMQ."
    )
    parser.add_argument("--debug", action="store_true", help="log debug lines, show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the researcher/writer demo on the broker")
    _broker_args(demo)
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds per task")
    demo.set_defaults(func=cmd_demo)

    send = sub.add_parser("send", help="send a message or a task from the shell")
    _broker_args(send)
    send.add_argument("content", help="the content: JSON, or else plain text")
    send.add_argument("--to", default="", help="recipient agent id (omit to let routes decide)")
    send.add_argument("--from", dest="sender", default="cli", help="sender id (default: cli)")
    send.add_argument("--type", default="task", choices=[t.value for t in MessageType])
    send.add_argument(
        "--priority", default="normal", choices=[p.name.lower() for p in MessagePriority]
    )
    send.add_argument("--wait", action="store_true", help="wait for the task's result")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    send.set_defaults(func=cmd_send)

    history = sub.add_parser("history", help="print a conversation or an agent's history")
    _broker_args(history)
    which = history.add_mutually_exclusive_group(required=True)
    which.add_argument("--conversation", help="conversation id")
    which.add_argument("--agent", help="agent id")
    history.set_defaults(func=cmd_history)

    run = sub.add_parser(
        "run",
        help="run the agents of a configuration until SIGTERM/SIGINT",
        description="Run the configured agents as consumers in one process. SIGTERM or"
        " SIGINT stops them gracefully: no new deliveries, in-flight handlers finish"
        " (up to --drain-timeout), exit status 0. A second signal cancels what still runs.",
    )
    run.add_argument("config", help="the YAML configuration file")
    run.add_argument(
        "--agent",
        action="append",
        metavar="ID",
        help="run only this agent (repeatable; default: every agent in the file)",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=runner.DEFAULT_DRAIN_TIMEOUT_S,
        metavar="S",
        help="seconds in-flight handlers get to finish at stop (default: %(default)s)",
    )
    _queue_type_arg(run, None)
    run.set_defaults(func=cmd_run)

    topology = sub.add_parser("topology", help="plan, apply or draw a namespace's topology")
    tsub = topology.add_subparsers(dest="topology_command", required=True, metavar="ACTION")
    for name, func, text in (
        (
            "plan",
            cmd_topology_plan,
            "show what `apply` would create, and what exists with other arguments"
            " (exit status 2 when something conflicts)",
        ),
        (
            "apply",
            cmd_topology_apply,
            "declare the exchanges, inboxes, retry, dead-letter and history queues and"
            " route bindings the configuration needs (idempotent; never deletes)",
        ),
        ("graph", cmd_topology_graph, "print a Mermaid flowchart of agents, routes and queues"),
    ):
        action = tsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("config", help="the YAML configuration file")
        _queue_type_arg(action, None)
        action.set_defaults(func=func)

    routes = sub.add_parser("routes", help="inspect a configuration's routes")
    rsub = routes.add_subparsers(dest="routes_command", required=True, metavar="ACTION")
    explain = rsub.add_parser(
        "explain",
        help="which routes take a message without recipient, and where it goes",
        description="Evaluate the routes (filters included) for a message without"
        " recipient; no broker needed.",
    )
    explain.add_argument("config", help="the YAML configuration file")
    explain.add_argument("--type", default="notification", choices=[t.value for t in MessageType])
    explain.add_argument("--sender", default="", help="sender id (default: none)")
    explain.add_argument(
        "--priority", default="normal", choices=list(_PRIORITIES), help="name or 1-4"
    )
    explain.add_argument("--content", default="null", help="content for filters: JSON or text")
    explain.add_argument("--metadata", default="{}", help="metadata for filters: a JSON object")
    explain.set_defaults(func=cmd_routes_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``amqp-agents`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        # The client libraries log connection failures that we report as one line.
        for noisy in ("aiormq", "aio_pika"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    command: Command = args.func
    try:
        return asyncio.run(command(args))
    except AgentsError as exc:
        if args.debug:
            raise
        # A configuration error lists one problem per line, each naming its place.
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``amqp-agents history ... | head``): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
