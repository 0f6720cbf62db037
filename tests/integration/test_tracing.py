"""One trace per piece of work across agents (issue 14), on the real broker, seen through
the OpenTelemetry SDK's in-memory exporter: the demo's chain, a retry, a dead letter,
and a foreign client's trace continued."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from amqp_agents import (
    HandlerError,
    Message,
    MessagePassingAgent,
    MessageQueue,
    MessageType,
    RemoteError,
    instrumentation,
    wire,
)
from amqp_agents.demo import ResearchAgent, run_demo
from amqp_agents.logs import JsonFormatter
from amqp_agents.retry import RetryPolicy
from amqp_agents.senders import connection_user


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """Tracing on, into an in-memory exporter; off again after the test."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    instrumentation.instrument(tracing=True, tracer_provider=provider)
    try:
        yield provider, spans
    finally:
        instrumentation.uninstrument()
        provider.shutdown()


@pytest.fixture
async def agents(queue: MessageQueue) -> AsyncIterator[list[MessagePassingAgent]]:
    """Agents a test starts; stopped after it."""
    started: list[MessagePassingAgent] = []
    yield started
    for agent in started:
        await agent.stop()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} is a root span"
    (parent,) = [s for s in spans if s.context.span_id == span.parent.span_id]
    return parent


def one(spans: list[ReadableSpan], kind: SpanKind, **attributes: Any) -> ReadableSpan:
    found = [
        s
        for s in spans
        if s.kind is kind and all(attrs(s).get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, f"{kind} {attributes}: {[(s.name, attrs(s)) for s in found]}"
    return found[0]


def check_messaging(span: ReadableSpan, destination: str) -> None:
    assert attrs(span)["messaging.system"] == "rabbitmq"
    assert attrs(span)["messaging.destination.name"] == destination


async def test_the_demo_chain_is_one_trace_with_its_links_and_attributes(
    exporter: tuple[TracerProvider, InMemorySpanExporter], queue: MessageQueue, namespace: str
) -> None:
    provider, memory = exporter
    with provider.get_tracer("test").start_as_current_span("demo") as root:
        result = await run_demo(queue, timeout_s=30)
    spans = list(memory.get_finished_spans())
    assert {s.context.trace_id for s in spans} == {root.get_span_context().trace_id}

    conversation = result.conversation_id
    # the writer streams its article: a "drafting" status and three pieces
    statuses = {"researcher": ["status"], "writer": ["status"] * 4}
    for worker, type_ in (("researcher", "task"), ("writer", "task")):
        consumer = one(spans, SpanKind.CONSUMER, **{"amqp_agents.agent": worker})
        check_messaging(consumer, namespace)
        assert attrs(consumer)["amqp_agents.message.type"] == type_
        assert attrs(consumer)["amqp_agents.attempt"] == 0
        assert attrs(consumer)["messaging.message.conversation_id"] == conversation
        # handle is a child of the send of the very message it handles ...
        producer = parent_of(consumer, spans)
        assert producer.kind is SpanKind.PRODUCER
        assert attrs(producer)["messaging.message.id"] == attrs(consumer)["messaging.message.id"]
        assert attrs(producer)["amqp_agents.agent"] == "coordinator"
        check_messaging(producer, namespace)
        # ... which is a child of send_task's CLIENT span, a child of the caller's span
        client = parent_of(producer, spans)
        assert client.kind is SpanKind.CLIENT
        assert attrs(client)["amqp_agents.recipient"] == worker
        assert attrs(client)["messaging.message.id"] == attrs(producer)["messaging.message.id"]
        assert parent_of(client, spans).name == "demo"
        # the status and the result are sent from inside the handler: its children
        replies = [s for s in spans if s.parent and s.parent.span_id == consumer.context.span_id]
        assert sorted(attrs(s)["amqp_agents.message.type"] for s in replies) == [
            "result",
            *statuses[worker],
        ]
        # the CLIENT span lasts until the reply: it ends after the result was sent
        (result_sent,) = [s for s in replies if attrs(s)["amqp_agents.message.type"] == "result"]
        assert client.end_time is not None and result_sent.start_time is not None
        assert client.end_time >= result_sent.start_time
        for reply in replies:
            assert reply.kind is SpanKind.PRODUCER
            check_messaging(reply, wire.reply_exchange_name(namespace))
            assert attrs(reply)["messaging.message.conversation_id"] == conversation
    assert all(s.status.status_code is not StatusCode.ERROR for s in spans)


class FlakyAgent(MessagePassingAgent):
    """Fails on a task's first attempt, succeeds on the next; logs while it works."""

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        logging.getLogger("amqp_agents.agent").warning("working on %s", task)
        if not hasattr(self, "failed_once"):
            self.failed_once = True
            raise RuntimeError("first attempt fails")
        return f"done {task}"


async def test_a_retry_stays_in_the_trace_and_log_lines_carry_its_ids(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
    queue: MessageQueue,
    agents: list[MessagePassingAgent],
    namespace: str,
) -> None:
    provider, memory = exporter
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    capture = Capture()
    capture.setFormatter(JsonFormatter())
    logger = logging.getLogger("amqp_agents.agent")
    logger.addHandler(capture)
    flaky = FlakyAgent("flaky", queue, retry=RetryPolicy(max_attempts=3, delays_s=(0.05,)))
    agents.append(flaky)
    await flaky.start_consuming()
    caller = MessagePassingAgent("caller", queue)
    try:
        with provider.get_tracer("test").start_as_current_span("caller") as root:
            assert await caller.send_task("flaky", "job", timeout=30) == "done job"
        await flaky.stop()  # its handling spans end once the handling finished
    finally:
        logger.removeHandler(capture)
    spans = list(memory.get_finished_spans())
    trace_id = root.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}

    first = one(spans, SpanKind.CONSUMER, **{"amqp_agents.attempt": 0})
    second = one(spans, SpanKind.CONSUMER, **{"amqp_agents.attempt": 1})
    assert first.status.status_code is StatusCode.ERROR
    assert "first attempt fails" in (first.status.description or "")
    assert second.status.status_code is not StatusCode.ERROR
    # the retry's copy is sent from the failed handling, the second attempt is its child
    retry = parent_of(second, spans)
    assert retry.kind is SpanKind.PRODUCER
    assert attrs(retry)["amqp_agents.attempt"] == 1
    check_messaging(retry, wire.retry_exchange_name(namespace, "flaky"))
    assert parent_of(retry, spans) is first
    assert parent_of(first, spans).kind is SpanKind.PRODUCER
    message_id = attrs(first)["messaging.message.id"]
    assert attrs(second)["messaging.message.id"] == message_id

    # every line logged while the handler ran names what it handled, and the trace
    entries = [json.loads(line) for line in lines]
    working = [e for e in entries if e["message"] == "working on job"]
    assert len(working) == 2
    for entry in working:
        assert entry["agent"] == "flaky"
        assert entry["message_id"] == message_id
        assert entry["conversation_id"] == attrs(first)["messaging.message.conversation_id"]
        assert entry["trace_id"] == format(trace_id, "032x")


class FailingAgent(MessagePassingAgent):
    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        raise HandlerError("cannot do that")


async def test_a_dead_letter_stays_in_the_trace(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
    queue: MessageQueue,
    agents: list[MessagePassingAgent],
    raw_channel: aio_pika.abc.AbstractChannel,
    namespace: str,
) -> None:
    provider, memory = exporter
    failing = FailingAgent("failing", queue)
    agents.append(failing)
    await failing.start_consuming()
    caller = MessagePassingAgent("caller", queue)
    with (
        provider.get_tracer("test").start_as_current_span("caller") as root,
        pytest.raises(RemoteError),
    ):
        await caller.send_task("failing", "job", timeout=30)
    # the ERROR reply goes out before the dead letter: stopping waits for the handling
    await failing.stop()
    dead_queue = await raw_channel.get_queue(wire.dead_queue_name(namespace), ensure=False)
    dead = await dead_queue.get(timeout=10)
    await dead.ack()
    spans = list(memory.get_finished_spans())
    trace_id = root.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}

    handled = one(spans, SpanKind.CONSUMER, **{"amqp_agents.agent": "failing"})
    assert handled.status.status_code is StatusCode.ERROR
    error = one(spans, SpanKind.PRODUCER, **{"amqp_agents.message.type": "error"})
    letter = one(
        spans,
        SpanKind.PRODUCER,
        **{"messaging.destination.name": wire.dead_letter_exchange_name(namespace)},
    )
    assert parent_of(error, spans) is handled
    assert parent_of(letter, spans) is handled
    client = one(spans, SpanKind.CLIENT)
    assert client.status.status_code is StatusCode.ERROR
    # the dead letter itself carries the trace: whoever reads it later can continue it
    traceparent = wire.header_text((dead.headers or {})[wire.H_TRACEPARENT])
    _, trace_hex, span_hex, _ = traceparent.split("-")
    assert int(trace_hex, 16) == trace_id
    assert int(span_hex, 16) == letter.context.span_id
    assert (dead.headers or {})[wire.H_DEAD_REASON] == "handler failed"


async def test_a_foreign_clients_trace_is_continued(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
    queue: MessageQueue,
    agents: list[MessagePassingAgent],
    raw_channel: aio_pika.abc.AbstractChannel,
    namespace: str,
    amqp_url: str,
) -> None:
    _, memory = exporter
    researcher = ResearchAgent("researcher", queue)
    agents.append(researcher)
    await researcher.start_consuming()
    trace_hex, span_hex = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    notified = asyncio.get_running_loop().create_future()
    researcher.handlers[MessageType.NOTIFICATION] = lambda m: _resolve(notified, m)
    exchange = await raw_channel.get_exchange(wire.exchange_name(namespace), ensure=False)
    await exchange.publish(
        aio_pika.Message(
            b'"hello"',
            content_type="application/json",
            message_id=str(uuid.uuid4()),
            type="notification",
            headers={
                "x-sender": "legacy",
                "traceparent": f"00-{trace_hex}-{span_hex}-01",
                "tracestate": "vendor=1",
            },
            user_id=connection_user(amqp_url),
        ),
        routing_key="notification.2.legacy.researcher",
    )
    await asyncio.wait_for(notified, 10)
    await researcher.stop()  # its span ends once the handling finished
    (handled,) = [s for s in memory.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert handled.context.trace_id == int(trace_hex, 16)
    assert handled.parent is not None and handled.parent.span_id == int(span_hex, 16)
    assert handled.parent.is_remote
    assert handled.context.trace_state.get("vendor") == "1"
    assert attrs(handled)["amqp_agents.sender"] == "legacy"


async def _resolve(future: asyncio.Future[Message], message: Message) -> None:
    if not future.done():
        future.set_result(message)
