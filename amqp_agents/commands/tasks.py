"""``cancel`` and ``agents``: stopping a task, and listing a namespace's agents.

Both create nothing on the broker (their queue is passive). ``cancel`` reads history
for the task (its deadline; whether it already finished), then appends the cancel
record (cancellation.py); with history off it appends the record without that look-up.
``agents`` reads the cards stream and asks each inbox for its consumers (cards.py).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from amqp_agents import wire
from amqp_agents.cancellation import publish_cancel
from amqp_agents.cards import AgentInfo
from amqp_agents.errors import ConfigError
from amqp_agents.queue import MessageQueue
from amqp_agents.task_follow import find_task
from amqp_agents.task_state import state_of

from . import options
from .history import timestamp


async def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a task by id; a finished or expired one is a no-op that says so."""
    async with options.existing_namespace(options.message_queue(args, passive=True)) as queue:
        if not queue.options.keeps_history:
            return await _cancel_blind(queue, args)
        found = await find_task(queue, args.task_id, since=args.since, timeout_s=args.timeout)
        if found.final is not None:
            state = state_of(found.final).value
            print(f"task {args.task_id} already {state}: nothing to cancel")
            return 0
        if found.task is None:
            raise ConfigError(
                f"task {args.task_id!r} is not in the retained history of {queue.namespace!r}"
                " (a wrong id, or a --since after it was sent)"
            )
        if found.deadline is None:
            raise ConfigError(
                f"task {args.task_id!r} has no deadline: a cancel record is kept until the"
                " task's deadline, so only a task whose requester waits can be cancelled"
            )
        if found.deadline <= datetime.now(UTC):
            print(
                f"task {args.task_id} has no deadline ahead: no agent will start it; nothing to do"
            )
            return 0
        task = found.task
        await publish_cancel(
            queue.publisher,
            task.id,
            sender=task.sender,
            recipient=task.recipient,
            deadline=found.deadline,
        )
    print(
        f"task {task.id} to {task.recipient or '(routed)'} cancelled"
        f" (the record is kept until its deadline, {found.deadline:%Y-%m-%d %H:%M:%S} UTC)"
    )
    return 0


async def _cancel_blind(queue: MessageQueue, args: argparse.Namespace) -> int:
    """History off: append the record without looking the task up. Its sender,
    recipient and deadline are unknown, so the record names the ``--to`` agent (else
    any) and is kept as long as an agent may hold any task (wire.MAX_TASK_DEADLINE_S)."""
    deadline = datetime.now(UTC) + timedelta(seconds=wire.MAX_TASK_DEADLINE_S)
    await publish_cancel(
        queue.publisher,
        args.task_id,
        sender=args.sender,
        recipient=args.to or "",
        deadline=deadline,
    )
    print(
        f"cancel record for task {args.task_id} published to {args.to or 'any agent'} (kept"
        f" until {deadline:%Y-%m-%d %H:%M:%S} UTC); history is off, so whether the task"
        " exists or already completed is unknown: a finished or unknown task is unaffected"
    )
    return 0


def format_agents(agents: list[AgentInfo]) -> str:
    """One line per agent: id, running or not, version, skills, description."""
    lines = [f"{'agent':<16} {'state':<8} {'version':<8} {'skills':<30} description"]
    for info in agents:
        card = info.card
        state = "running" if info.live else ("gone" if card.state == "gone" else "down")
        skills = ",".join(
            s.message_type + ("(typed)" if s.input_schema else "") for s in card.skills
        )
        lines.append(f"{card.id:<16} {state:<8} {card.version:<8} {skills:<30} {card.description}")
    return "\n".join(lines)


async def cmd_agents(args: argparse.Namespace) -> int:
    """List the namespace's agents from their cards, with whether each runs now."""
    async with options.existing_namespace(options.message_queue(args, passive=True)) as queue:
        agents = await queue.discover(include_gone=args.all)
        namespace = queue.namespace
    if not agents:
        print(f"no agent cards in namespace {namespace!r}")
        return 0
    print(format_agents(agents))
    return 0


def add_parsers(sub: argparse._SubParsersAction[options.Parser]) -> None:
    """Add ``cancel`` and ``agents``."""
    cancel = sub.add_parser(
        "cancel",
        help="cancel a task: skipped if queued, stopped if running",
        description="Cancel the task with this id: an agent skips it if it is still"
        " queued and cancels its handler if it runs; the requester's wait ends with"
        " TaskCancelledError. The task is looked up in the namespace's history (its"
        " deadline, and whether it already finished: then nothing is done); with"
        " history off, the record is published without that look-up. Nothing is"
        " declared: the namespace must exist.",
    )
    options.add_config_option(cancel, required=False)
    options.add_broker_options(cancel)
    cancel.add_argument("task_id", metavar="TASK_ID", help="the task's message id")
    cancel.add_argument(
        "--to",
        type=options.agent_id,
        metavar="ID",
        help="with history off: the agent the task went to (default: any agent)",
    )
    cancel.add_argument(
        "--from",
        dest="sender",
        type=options.agent_id,
        default="cli",
        metavar="ID",
        help="with history off: the sender the record names (default: %(default)s); only"
        " a RabbitMQ user who may speak for the task's sender is obeyed",
    )
    cancel.add_argument(
        "--since", type=timestamp, metavar="TIME", help="the task was sent after this time"
    )
    cancel.add_argument(
        "--timeout",
        type=options.positive_seconds,
        default=60.0,
        metavar="S",
        help="seconds reading history may take (default: %(default)s)",
    )
    cancel.set_defaults(func=cmd_cancel, parser=cancel)

    agents = sub.add_parser(
        "agents",
        help="list the namespace's agents, their cards and whether each runs",
        description="List the agents that published a card in the namespace (when they"
        " started), with their version, skills (message types; typed ones have a payload"
        " schema) and description, and whether a consumer is on the inbox now.",
    )
    options.add_config_option(agents, required=False)
    options.add_broker_options(agents)
    agents.add_argument("--all", action="store_true", help="also list agents that stopped")
    agents.set_defaults(func=cmd_agents, parser=agents)
