"""The ``amqp-agents`` command line; the only module that prints or exits.

Every command has ``--help``. Errors are one line on stderr and exit status 1, never a
traceback (``--debug`` shows it).
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

from .agent import MessagePassingAgent
from .demo import run_demo
from .errors import AgentsError
from .message import Message, MessagePriority, MessageType
from .queue import MessageQueue

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


def _queue(args: argparse.Namespace) -> MessageQueue:
    return MessageQueue(
        args.url, namespace=args.namespace, connection_name=f"amqp-agents {args.command}"
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
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
