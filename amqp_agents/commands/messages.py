"""``demo`` and ``send``: talking to a broker from the shell.

``send`` and ``history`` only read what exists: their queue is passive, so a mistyped
namespace is an error instead of a new namespace (the private reply queue of
``send`` is exclusive and goes with the connection). ``demo`` works in a namespace of
its own and deletes it afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from aio_pika.exceptions import ChannelNotFoundEntity

from amqp_agents import wire
from amqp_agents.agent import MessagePassingAgent
from amqp_agents.connection import redact_url
from amqp_agents.demo import run_demo
from amqp_agents.errors import BrokerUnreachableError, TopologyError
from amqp_agents.message import Message, MessageType, create_task_message
from amqp_agents.queue import MessageQueue
from amqp_agents.rpc import TaskHandle
from amqp_agents.topology import delete_namespace

from . import options

TIMELINE_HEADER = f"{'time':<12}  {'from':<12} -> {'to':<12} {'type':<12} {'priority':<8} content"


def format_timeline(messages: Sequence[Message]) -> str:
    """A conversation as readable lines under a header, one line per message.

    >>> print(format_timeline([Message(sender="a", recipient="b", content="hi",
    ...       timestamp=datetime(2026, 1, 1, 9, 30, tzinfo=UTC))]))  # doctest: +SKIP
    time          from         -> to           type         priority content
    09:30:00.000  a            -> b            notification NORMAL   "hi"
    """
    lines = [TIMELINE_HEADER]
    for m in messages:
        content = json.dumps(m.content, ensure_ascii=False)
        if len(content) > 70:
            content = content[:67] + "..."
        lines.append(
            f"{m.timestamp:%H:%M:%S.%f}"[:-3]
            + f"  {m.sender or '-':<12} -> {m.recipient or '(routed)':<12}"
            f" {m.type.value:<12} {m.priority.name:<8} {content}"
        )
    return "\n".join(lines)


# -- demo -------------------------------------------------------------------------------

LLM_VARIABLES = (
    "set OPENAI_API_KEY (and OPENAI_BASE_URL for another OpenAI-compatible endpoint,"
    " AMQP_AGENTS_MODEL for the model) and install the openai package"
)


def _canned_reason() -> str:
    """Why the demo's agents answered without an LLM."""
    if not os.environ.get("OPENAI_API_KEY"):
        return "OPENAI_API_KEY is unset"
    if importlib.util.find_spec("openai") is None:
        return "OPENAI_API_KEY is set, but the openai package is not installed"
    return "the openai client could not be created"


async def _namespace_exists(args: argparse.Namespace, namespace: str) -> bool:
    try:
        async with options.message_queue(args, passive=True, namespace=namespace, routes=False):
            return True
    except TopologyError:
        return False


MEMORY_DEMO_URL = "memory://demo"
"""Where the demo runs when no broker answers (or with ``--memory``): in this process."""


class _Stream:
    """Prints the pieces of a streamed answer on one line, as they arrive."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = False

    def show(self, piece: str) -> None:
        print(piece if self.started else self.label + piece, end="", flush=True)
        self.started = True

    def end(self) -> None:
        if self.started:
            print()


async def cmd_demo(args: argparse.Namespace) -> int:
    """Run the researcher/writer demo in its own namespace, then delete it; in memory
    when no broker answers (or with ``--memory``)."""
    if args.memory:
        args.url = MEMORY_DEMO_URL
    try:
        return await _demo(args)
    except _Unreachable as unreachable:
        print(
            f"No broker answers ({unreachable.error}): running the demo in memory instead"
            " (memory://, this process only).",
            flush=True,
        )
        args.url = MEMORY_DEMO_URL
        return await _demo(args)


class _Unreachable(Exception):
    """The demo's broker did not answer before anything ran on it."""

    def __init__(self, error: BrokerUnreachableError) -> None:
        super().__init__(str(error))
        self.error = error


async def _demo(args: argparse.Namespace) -> int:
    namespace = args.namespace or f"demo-{uuid.uuid4().hex[:8]}"
    in_memory = str(args.url or "").startswith("memory://")
    try:
        existed = bool(args.namespace) and await _namespace_exists(args, namespace)
        delete = not args.keep and not existed
        queue = options.message_queue(args, passive=False, namespace=namespace, routes=False)
        await queue.connect()
    except BrokerUnreachableError as exc:
        if in_memory:
            raise
        raise _Unreachable(exc) from None
    async with queue:
        fate = "deleted at the end; --keep keeps it" if delete else "kept"
        print(f"Namespace {namespace!r} on {redact_url(queue.url)} ({fate}).")
        print("Starting researcher and writer...", flush=True)
        streamed = _Stream("Writer streams the article: ")
        try:
            result = await run_demo(queue, timeout_s=args.timeout, on_piece=streamed.show)
        finally:
            if delete:
                channel = await queue.channel()
                await delete_namespace(channel, namespace, sorted(queue.declared_queues))
                await channel.close()
    streamed.end()
    print(f"\nResearch: {result.research}")
    print(f"Article:  {result.article}")
    if result.model is None:
        print(f"\nThese answers are canned: no LLM is configured ({_canned_reason()}).")
        print(f"To have a model answer, {LLM_VARIABLES}.")
    else:
        endpoint = os.environ.get("OPENAI_BASE_URL") or "the OpenAI API"
        print(f"\nAnswered by model {result.model!r} at {endpoint}.")
    print(f"\nConversation {result.conversation_id} (read back from history):")
    print(format_timeline(result.timeline))
    if delete:
        print(f"\nNamespace {namespace!r} deleted.")
    else:
        print(
            f"\nRead it again: amqp-agents history --namespace {namespace}"
            f" --conversation {result.conversation_id}"
        )
    return 0


# -- send -------------------------------------------------------------------------------


def _read_content(args: argparse.Namespace) -> str:
    """The content text: the argument, ``-`` (stdin) or ``--content-file``."""
    if (args.content is None) == (args.content_file is None):
        options.usage_error(
            args, "give the content as an argument, '-' (stdin) or --content-file PATH"
        )
    source = args.content_file or args.content
    if args.content_file is None and source != "-":
        return str(source)
    try:
        if source == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        with open(source, "rb") as file:
            return file.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        options.usage_error(args, f"cannot read the content from {source}: {exc}")


def _message(args: argparse.Namespace) -> Message:
    """The message to send: plain text, or with ``--json`` the parsed JSON value."""
    text = _read_content(args)
    content: Any = text
    if args.json:
        try:
            content = json.loads(text)
        except ValueError as exc:
            options.usage_error(args, f"--json: the content is not JSON: {exc}")
    if args.type != MessageType.TASK.value:
        return Message(
            sender=args.sender,
            recipient=args.to or "",
            type=MessageType(args.type),
            priority=args.priority,
            content=content,
            conversation_id=str(uuid.uuid4()),
        )
    if not args.json:
        return create_task_message(args.sender, args.to or "", text, priority=args.priority)
    description = content.get("description") if isinstance(content, dict) else None
    context = content.get("context", {}) if isinstance(content, dict) else None
    if not isinstance(description, str) or not isinstance(context, dict):
        options.usage_error(
            args, '--json: a task is {"description": "text", "context": {...}} (context optional)'
        )
    return create_task_message(args.sender, args.to or "", description, context, args.priority)


async def _consumers(queue: MessageQueue, agent_id: str) -> int | None:
    """How many consumers the agent's inbox has (None: it has no inbox)."""
    channel = await queue.channel()
    try:
        inbox = await channel.declare_queue(
            wire.inbox_name(queue.namespace, agent_id), passive=True
        )
    except ChannelNotFoundEntity:
        return None
    finally:
        if not channel.is_closed:
            await channel.close()
    return inbox.declaration_result.consumer_count


def _where(queue: MessageQueue, message: Message) -> str:
    if message.recipient:
        return message.recipient
    if queue.router is not None:
        return "routes: " + ", ".join(queue.router.get_destinations(message))
    return f"whoever the routes of namespace {queue.namespace!r} name (no recipient)"


async def cmd_send(args: argparse.Namespace) -> int:
    """Send a message, or a task and optionally wait for its result."""
    message = _message(args)
    if args.wait and (message.type is not MessageType.TASK or not message.recipient):
        options.usage_error(
            args, "--wait needs --type task and --to: only an addressed task answers"
        )
    sending = options.message_queue(args, passive=True, reply_owner=args.sender)
    async with options.existing_namespace(sending) as queue:
        consumers = await _consumers(queue, message.recipient) if message.recipient else None
        if args.wait and consumers == 0:
            return options.fail(
                f"no agent is consuming {message.recipient!r} (0 consumers) in namespace"
                f" {queue.namespace!r}: nothing would answer; start it (`amqp-agents run"
                " CONFIG`) or send without --wait to leave the task in its inbox"
            )
        handle: TaskHandle | None = None
        if message.type is MessageType.TASK:
            handle = await _send_task(args, queue, message)
            message = handle.message
        else:
            await queue.send(message)
        out = sys.stderr if args.wait else sys.stdout
        print(f"sent {message.type.value} to {_where(queue, message)}", file=out)
        cid = message.conversation_id
        print(f"  conversation {cid}  (amqp-agents history --conversation {cid})", file=out)
        print(f"  message      {message.id}  (this {message.type.value}'s own id)", file=out)
        out.flush()
        if consumers == 0:
            print(f"no agent consumes {message.recipient!r} now: it waits in the inbox", file=out)
        if args.wait and handle is not None:
            print(json.dumps(await handle.result(), ensure_ascii=False))
    return 0


async def _send_task(args: argparse.Namespace, queue: MessageQueue, task: Message) -> TaskHandle:
    """Send ``task`` as a request with a private reply queue; returns its handle."""
    sender = MessagePassingAgent(args.sender, queue)

    def on_status(status: Message) -> None:
        print(f"status from {status.sender}: {json.dumps(status.content)}", file=sys.stderr)

    handle: TaskHandle = await sender.send_task(
        task.recipient,
        task.content["description"],
        task.content["context"],
        wait_for_result=False,
        timeout=args.timeout,
        priority=task.priority,
        on_status=on_status if args.wait else None,
        conversation_id=task.conversation_id,
    )
    return handle


# -- parsers ----------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction[options.Parser]) -> None:
    """Add ``demo`` and ``send``."""
    demo = sub.add_parser(
        "demo",
        help="run the researcher/writer demo on the broker",
        description="Start a researcher and a writer, have a coordinator send each a task,"
        " and print their answers and the conversation read back from history. It runs"
        " in a namespace of its own (demo-<random>, or --namespace) that it deletes"
        " afterwards unless --keep or the namespace existed before. The answers are"
        " canned unless an LLM is configured: " + LLM_VARIABLES + ".",
    )
    options.add_config_option(demo, required=False)
    options.add_broker_options(demo)
    demo.add_argument(
        "--timeout",
        type=options.positive_seconds,
        default=60.0,
        metavar="S",
        help="seconds each task may take (default: %(default)s)",
    )
    demo.add_argument("--keep", action="store_true", help="keep the namespace afterwards")
    demo.add_argument(
        "--memory",
        action="store_true",
        help="run in memory (memory://), without a broker; the demo does so by itself"
        " when no broker answers",
    )
    demo.set_defaults(func=cmd_demo, parser=demo)

    send = sub.add_parser(
        "send",
        help="send a message or a task from the shell",
        description="Send a message to an agent (--to), or without recipient along the"
        " namespace's routes. A task with --wait prints progress reports on stderr and the"
        " result on stdout. Nothing is declared: the namespace must exist.",
    )
    options.add_config_option(send, required=False)
    options.add_broker_options(send)
    send.add_argument("content", nargs="?", help="the content as text ('-': read it from stdin)")
    send.add_argument("--content-file", metavar="PATH", help="read the content from this file")
    send.add_argument(
        "--json",
        action="store_true",
        help='the content is JSON (a task: {"description": "...", "context": {...}})',
    )
    send.add_argument(
        "--to",
        type=options.agent_id,
        metavar="ID",
        help="recipient agent id (default: none, the routes decide)",
    )
    send.add_argument(
        "--from",
        dest="sender",
        type=options.agent_id,
        default="cli",
        metavar="ID",
        help="sender agent id (default: %(default)s)",
    )
    send.add_argument(
        "--type",
        default=MessageType.TASK.value,
        choices=[t.value for t in MessageType],
        help="message type (default: %(default)s)",
    )
    options.add_priority_option(send)
    send.add_argument("--wait", action="store_true", help="wait for the task's result")
    send.add_argument(
        "--timeout",
        type=options.positive_seconds,
        default=30.0,
        metavar="S",
        help="seconds --wait waits for the result (default: %(default)s)",
    )
    send.set_defaults(func=cmd_send, parser=send)
