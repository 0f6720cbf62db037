"""History ``off``: the namespace has no ``{ns}.history`` stream and no binding of it,
traffic works as with history on, and a history query fails with a typed error.

What the broker has is checked on the broker itself (a passive declare of the stream,
and ``rabbitmqctl list_bindings`` for the namespace), not taken from the layout.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.exceptions import ChannelNotFoundEntity

from amqp_agents import (
    DeliveryError,
    HistoryOffError,
    Message,
    MessagePassingAgent,
    MessageQueue,
    MessageType,
    UnknownRecipientError,
    wire,
)
from amqp_agents.routing import MessageRouter

from .conftest import Run
from .test_cli import one_error_line

QUEUE_TYPES = pytest.mark.parametrize("queue_type", wire.QUEUE_TYPES)


class EchoAgent(MessagePassingAgent):
    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        return {"task": task}


async def stream_exists(amqp_url: str, namespace: str) -> bool:
    """Whether ``{ns}.history`` exists on the broker (a passive declare)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(wire.history_name(namespace), passive=True)
        except ChannelNotFoundEntity:
            return False
        return True
    finally:
        await connection.close()


def bindings_of(rabbitmqctl: str, namespace: str) -> list[tuple[str, str, str]]:
    """(source, destination, key) of every binding from the namespace's exchanges."""
    done = subprocess.run(
        [rabbitmqctl, "-q", "list_bindings", "source_name", "destination_name", "routing_key"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [tuple(line.split("\t")) for line in done.stdout.splitlines() if "\t" in line]
    return [
        (row[0], row[1], row[2] if len(row) > 2 else "")
        for row in rows
        if row[0].startswith(namespace + ".") or row[0] == namespace
    ]


@QUEUE_TYPES
async def test_off_declares_no_stream_and_no_history_binding(
    make_queue: Callable[..., Awaitable[MessageQueue]],
    amqp_url: str,
    rabbitmqctl: str,
    queue_type: str,
) -> None:
    router = MessageRouter()
    router.add_route("type:notification", ["bob"])
    queue = await make_queue(history="off", queue_type=queue_type, router=router)
    await queue.ensure_inbox("bob")

    assert not await stream_exists(amqp_url, queue.namespace)
    bindings = await asyncio.to_thread(bindings_of, rabbitmqctl, queue.namespace)
    destinations = {destination for _, destination, _ in bindings}
    assert destinations, "the inbox bindings are there"
    assert wire.history_name(queue.namespace) not in destinations
    ns = queue.namespace
    control = {wire.cancel_stream_name(ns), wire.card_stream_name(ns)}  # there either way
    assert destinations <= {*queue.inbox_queue_names("bob"), wire.dead_queue_name(ns), *control}


async def test_stream_is_declared_with_history_on(
    make_queue: Callable[..., Awaitable[MessageQueue]], amqp_url: str
) -> None:
    """The check above can fail: with the default, the stream is there."""
    queue = await make_queue()
    assert await stream_exists(amqp_url, queue.namespace)


@QUEUE_TYPES
async def test_off_sends_receives_and_refuses_unknown_recipients(
    make_queue: Callable[..., Awaitable[MessageQueue]], queue_type: str
) -> None:
    router = MessageRouter()
    router.add_route("type:notification", ["bob"])
    queue = await make_queue(history="off", queue_type=queue_type, router=router)
    await queue.ensure_inbox("bob")

    direct = Message(sender="alice", recipient="bob", type=MessageType.TASK, content="hi")
    routed = Message(sender="alice", recipient="", type=MessageType.NOTIFICATION, content="r")
    await queue.send(direct)
    await queue.send(routed)
    got = [await queue.receive("bob", timeout=10) for _ in range(2)]
    assert sorted(m.content for m in got if m is not None) == ["hi", "r"]

    with pytest.raises(UnknownRecipientError):
        await queue.send(Message(sender="alice", recipient="ghost", content="boo"))


@QUEUE_TYPES
async def test_off_answers_requests(
    make_queue: Callable[..., Awaitable[MessageQueue]], queue_type: str
) -> None:
    queue = await make_queue(history="off", queue_type=queue_type)
    worker = EchoAgent("worker", queue)
    await worker.start_consuming()
    try:
        boss = MessagePassingAgent("boss", queue)
        assert await boss.send_task("worker", "add", timeout=30) == {"task": "add"}
        with pytest.raises(UnknownRecipientError):
            await boss.send_task("ghost", "boo", timeout=5)
    finally:
        await worker.stop()


@pytest.mark.parametrize("query", ["conversation", "agent"])
async def test_off_history_query_raises_a_typed_error_saying_how_to_turn_it_on(
    make_queue: Callable[..., Awaitable[MessageQueue]], query: str
) -> None:
    queue = await make_queue(history="off")
    with pytest.raises(HistoryOffError, match="history='stream'"):
        if query == "conversation":
            await queue.get_conversation("c1")
        else:
            await queue.get_agent_history("bob", limit=5)


# -- the command line -----------------------------------------------------------------


async def test_cli_history_off_where_the_namespace_is_declared(
    run_cli: Run, example_config: Path, amqp_url: str, namespace: str
) -> None:
    status, output = await run_cli("topology", "apply", "--history", "off", str(example_config))
    assert status == 0, output
    assert not await stream_exists(amqp_url, namespace)

    status, output = await run_cli("send", "--history", "off", "--to", "coordinator", "hi")
    assert status == 0, output
    status, output = await run_cli("send", "--history", "off", "--to", "ghost", "hi")
    assert status == 1 and "ghost" in one_error_line(output)

    status, output = await run_cli("history", "--history", "off", "--conversation", "c")
    assert status == 1 and "history='stream'" in one_error_line(output)
    # Not told that history is off: the missing stream is still one line saying so.
    status, output = await run_cli("history", "--conversation", "c")
    assert status == 1 and "has no history stream" in one_error_line(output)
    status, output = await run_cli("history", "index", "--db", "postgresql://127.0.0.1/x")
    assert status == 1 and "has no history stream" in one_error_line(output)
    status, output = await run_cli(
        "history", "index", "--history", "off", "--db", "postgresql://127.0.0.1/x"
    )
    assert status == 1 and "there is no stream to index" in one_error_line(output)
    assert not await stream_exists(amqp_url, namespace), "read-only commands declare nothing"


@pytest.mark.parametrize("extra", [[], ["--history", "off"]], ids=["stream", "off"])
async def test_cli_history_index_of_a_missing_namespace_is_one_line(
    run_cli: Run, namespace: str, extra: list[str]
) -> None:
    status, output = await run_cli(
        "history", "index", "--namespace", namespace, "--db", "postgresql://127.0.0.1/x", *extra
    )
    assert status == 1, output
    line = one_error_line(output)
    assert f"namespace {namespace!r} does not exist" in line


@pytest.mark.parametrize("history", wire.HISTORY_MODES)
async def test_an_answer_to_a_gone_reply_queue_is_refused_only_with_history_off(
    make_queue: Callable[..., Awaitable[MessageQueue]], history: str
) -> None:
    """With history on, the stream takes such an answer (the broker confirms it); with
    history off nothing does, so the sender learns of the loss (agents log it)."""
    queue = await make_queue(history=history)
    gone = f"{queue.namespace}.reply.boss.0123456789abcdef"
    answer = Message(sender="worker", recipient="boss", type=MessageType.RESULT, content=1)
    if history == "stream":
        await queue.send_to_queue(answer, gone)
    else:
        with pytest.raises(DeliveryError):
            await queue.send_to_queue(answer, gone)
