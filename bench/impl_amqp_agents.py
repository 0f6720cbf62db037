"""The workloads written against the amqp_agents library API, the way a user would.

One :class:`~amqp_agents.MessageQueue` (one connection) per measured run, in its own
namespace (``self.prefix``); every role of a workload is an agent on it:

* ``pipe``: the producer calls ``MessageQueue.send`` (confirmed, persistent,
  mandatory) with at most ``PUBLISH_WINDOW`` sends in flight; the consumer is a
  :class:`~amqp_agents.MessagePassingAgent` (concurrency = prefetch) whose handler
  validates the content with the pydantic ``TaskBody``; the agent acks after it.
* ``rpc_seq`` / ``rpc_conc``: a client agent calls ``send_task(..., wait_for_result=True)``;
  the server agent's TASK handler validates the task and returns the reply content.
* ``fanout``: recipient-less messages through a routing queue (see :meth:`fanout`).
* ``memory``: a child process per figure, so RSS is the library's alone
  (``python -m bench.memory``).

Differences to the raw aio-pika side that the library's contract imposes are listed
in ``bench/README.md`` ("amqp_agents side").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from amqp_agents import (
    Message,
    MessagePassingAgent,
    MessagePriority,
    MessageQueue,
    MessageRouter,
    MessageType,
    RoutingMessageQueue,
    wire,
)
from amqp_agents.topology import delete_namespace
from bench import spec
from bench.base import Completion, Figures, Implementation, latency_figures, wait_budget

OP_TIMEOUT = 15.0
"""Seconds for one protocol operation (connect, declare, one send, one RPC)."""

FANOUT_RULES = ("type:notification", "type:result", "priority:4", "priority:2")
"""Rule k sends to agent k; each fanout message matches exactly two (see ``fanout``)."""

FANOUT_TYPES = {"task": MessageType.NOTIFICATION, "result": MessageType.RESULT}
"""The baseline's first routing-key word -> our message type (a TASK would get a reply)."""


def _task_handler(done: Completion) -> Callable[[Message], Awaitable[None]]:
    """Validate the content with the pydantic model (as the baseline does), count it."""

    async def handle(message: Message) -> None:
        try:
            spec.TaskBody.model_validate(message.content)
        except Exception as exc:
            done.fail(exc)
            raise
        done.hit()

    return handle


async def _run_windowed(
    n: int, send: Callable[[int], Coroutine[Any, Any, None]], *, window: int, timeout: float
) -> None:
    """Run ``send(i)`` for i in range(n), at most ``window`` at once; raise the first error.

    ``MessageQueue.send`` returns only once the broker confirmed the message, so this
    is the same "at most ``window`` unconfirmed publishes" as the baseline.
    """
    sem = asyncio.Semaphore(window)
    pending: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    def on_done(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        sem.release()
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            failures.append(exc)

    try:
        for i in range(n):
            if sem.locked():
                async with asyncio.timeout(timeout):
                    await sem.acquire()
            else:
                await sem.acquire()
            if failures:
                raise failures[0]
            task = asyncio.create_task(send(i))
            pending.add(task)
            task.add_done_callback(on_done)
        if pending:
            async with asyncio.timeout(timeout):
                await asyncio.wait(set(pending))
        if failures:
            raise failures[0]
    finally:
        for task in pending:
            task.cancel()


class AmqpAgentsImplementation(Implementation):
    name = "amqp_agents"

    def __init__(self) -> None:
        super().__init__()
        self._mq: MessageQueue | None = None
        self._url = ""
        self._router = MessageRouter()

    async def open(self, url: str, prefix: str) -> None:
        # The queue (and so the connection) is made by the first workload call, the
        # warm-up: fanout needs a RoutingMessageQueue, the others a plain MessageQueue.
        self.prefix = prefix
        self._url = url

    async def _queue(self, router: MessageRouter | None = None) -> MessageQueue:
        """The run's one connected queue, in namespace ``self.prefix``."""
        if self._mq is not None:
            return self._mq
        ns = self.prefix
        # Track before declaring: the harness sweeps them if anything goes wrong.
        self.track_exchange(wire.exchange_name(ns))
        self.track_exchange(wire.dead_letter_exchange_name(ns))
        self.track_queue(wire.dead_queue_name(ns))
        self.track_queue(wire.history_name(ns))
        options: dict[str, Any] = {
            "namespace": ns,
            "publish_timeout_s": OP_TIMEOUT,
            "connect_timeout_s": OP_TIMEOUT,
            "connection_name": f"bench {ns}",
            "queue_type": self.queue_type,
            "history": self.history_mode,
        }
        mq = (
            MessageQueue(self._url, **options)
            if router is None
            else RoutingMessageQueue(router, self._url, **options)
        )
        await mq.connect()
        self._mq = mq
        return mq

    async def close(self) -> None:
        mq, self._mq = self._mq, None
        if mq is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(OP_TIMEOUT):
                channel = await mq.channel()
                await delete_namespace(channel, mq.namespace, sorted(mq.declared_queues))
                self.queues.difference_update(mq.declared_queues)
                self.queues.discard(wire.history_name(mq.namespace))
                self.queues.discard(wire.dead_queue_name(mq.namespace))
                self.exchanges.clear()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(OP_TIMEOUT):
                await mq.close()

    # --- plumbing -----------------------------------------------------------------------
    def _agent_id(self, role: str) -> str:
        """A fresh agent id (one per workload call), its inbox tracked for clean-up."""
        self._seq += 1
        agent_id = f"{role}{self._seq}"
        for name in wire.inbox_queue_names(self.prefix, agent_id, self._queue_type()):
            self.track_queue(name)
        return agent_id

    def _queue_type(self) -> wire.QueueType:
        return wire.validate_queue_type(self.queue_type)

    async def _delete_inboxes(self, mq: MessageQueue, *agent_ids: str) -> None:
        channel = await mq.channel()
        try:
            for agent_id in agent_ids:
                for name in mq.inbox_queue_names(agent_id):
                    await channel.queue_delete(name, timeout=OP_TIMEOUT)
                    self.queues.discard(name)
                    mq.declared_queues.discard(name)
        finally:
            await channel.close()

    # --- workloads ----------------------------------------------------------------------
    async def pipe(self, n: int, payload: dict[str, Any]) -> Figures:
        task = spec.TaskBody.model_validate(payload)
        mq = await self._queue()
        producer_id = self._agent_id("producer")
        consumer_id = self._agent_id("consumer")
        done = Completion(n)
        # Fire-and-forget work is a NOTIFICATION: a TASK always gets a RESULT back.
        consumer = MessagePassingAgent(consumer_id, mq, concurrency=spec.PREFETCH)
        consumer.on(MessageType.NOTIFICATION)(_task_handler(done))
        await consumer.start_consuming()
        try:

            async def send(i: int) -> None:
                await mq.send(
                    Message(
                        sender=producer_id,
                        recipient=consumer_id,
                        type=MessageType.NOTIFICATION,
                        priority=MessagePriority(spec.PIPE_PRIORITY),
                        content=task.model_dump(),
                    )
                )

            t0 = time.perf_counter()
            await _run_windowed(n, send, window=spec.PUBLISH_WINDOW, timeout=OP_TIMEOUT)
            t_end = await done.wait(wait_budget(n))
        finally:
            await consumer.stop()
            await self._delete_inboxes(mq, consumer_id)
        return {"msg_per_s": n / (t_end - t0)}

    async def _rpc_agents(self) -> tuple[MessagePassingAgent, MessagePassingAgent]:
        """A started server agent that echoes tasks, and a client agent."""
        mq = await self._queue()
        server = MessagePassingAgent(self._agent_id("server"), mq, concurrency=spec.PREFETCH)

        @server.on(MessageType.TASK)
        async def echo(message: Message) -> dict[str, Any]:
            request = spec.RpcRequest.model_validate(message.content["context"])
            return spec.RpcReply(ok=True, result={"echo": request.params}).model_dump()

        await server.start_consuming()
        client = MessagePassingAgent(self._agent_id("client"), mq)
        self.track_queue((await mq.replies()).queue_name)
        return server, client

    @staticmethod
    async def _call(client: MessagePassingAgent, server_id: str, i: int) -> None:
        request = spec.RpcRequest(method="echo", params={"i": i})
        result = await client.send_task(
            server_id, "echo", context=request.model_dump(), timeout=OP_TIMEOUT
        )
        spec.RpcReply.model_validate(result)

    async def rpc_seq(self, n: int) -> Figures:
        server, client = await self._rpc_agents()
        try:
            latencies: list[float] = []
            t0 = time.perf_counter()
            for i in range(n):
                started = time.perf_counter()
                await self._call(client, server.id, i)
                latencies.append(time.perf_counter() - started)
            elapsed = time.perf_counter() - t0
        finally:
            await server.stop()
            await self._delete_inboxes(server.queue, server.id)
        return latency_figures(latencies, elapsed)

    async def rpc_conc(self, n: int, in_flight: int) -> Figures:
        server, client = await self._rpc_agents()
        try:
            latencies: list[float] = []

            async def one(i: int) -> None:
                started = time.perf_counter()
                await self._call(client, server.id, i)
                latencies.append(time.perf_counter() - started)

            t0 = time.perf_counter()
            await _run_windowed(n, one, window=in_flight, timeout=OP_TIMEOUT)
            elapsed = time.perf_counter() - t0
        finally:
            await server.stop()
            await self._delete_inboxes(server.queue, server.id)
        return latency_figures(latencies, elapsed)

    async def fanout(self, n: int) -> Figures:
        """Recipient-less messages routed by four rules; each reaches 2 of the 4 agents.

        Rule k sends to agent k (the baseline's queue k): ``type:notification``,
        ``type:result``, ``priority:4``, ``priority:2``. Message i is
        ``FANOUT_ROUTING_KEYS[i % 4]`` with the type word ``task`` played by
        ``notification`` (a TASK always gets a RESULT back; these are fire-and-forget):
        (notification, 4), (notification, 2), (result, 4), (result, 2). Each message
        matches one type rule and one priority rule: two deliveries, N/2 per agent.
        """
        task = spec.TaskBody.model_validate(spec.make_payload())
        router = self._router
        mq = await self._queue(router)
        assert isinstance(mq, RoutingMessageQueue) and mq.router is router
        producer_id = self._agent_id("producer")
        total = n * spec.FANOUT_COPIES
        done = Completion(total)
        handler = _task_handler(done)
        agents: list[MessagePassingAgent] = []
        # A route keeps its pattern and gets this call's agent (the warm-up's inboxes,
        # and with them their bindings, are deleted when the warm-up ends).
        for rule in FANOUT_RULES:
            agent = MessagePassingAgent(self._agent_id("sub"), mq, concurrency=spec.PREFETCH)
            agent.on(MessageType.NOTIFICATION)(handler)
            agent.on(MessageType.RESULT)(handler)
            router.add_route(rule, [agent.id])
            agents.append(agent)
        await mq.bind_routes()
        try:
            for agent in agents:
                await agent.start_consuming()
            kinds = [
                (FANOUT_TYPES[key.split(".")[0]], MessagePriority(int(key.split(".")[1])))
                for key in spec.FANOUT_ROUTING_KEYS
            ]

            async def send(i: int) -> None:
                msg_type, priority = kinds[i % len(kinds)]
                await mq.send(
                    Message(
                        sender=producer_id,
                        type=msg_type,
                        priority=priority,
                        content=task.model_dump(),
                    )
                )

            t0 = time.perf_counter()
            await _run_windowed(n, send, window=spec.PUBLISH_WINDOW, timeout=OP_TIMEOUT)
            t_end = await done.wait(wait_budget(total))
        finally:
            for agent in agents:
                await agent.stop()
            await self._delete_inboxes(mq, *(agent.id for agent in agents))
        if done.count != total:  # stop() drained every delivery that was under way
            raise RuntimeError(f"{done.count} deliveries for {n} messages, expected {total}")
        return {"deliveries_per_s": total / (t_end - t0)}

    async def history(self, n: int, db: str) -> Figures:
        """History figures from a child process (``bench/history.py``); no aio-pika side."""
        ns = f"{self.prefix}.history"
        for name in (wire.history_name(ns), wire.dead_queue_name(ns)):
            self.track_queue(name)
        for name in (wire.exchange_name(ns), wire.dead_letter_exchange_name(ns)):
            self.track_exchange(name)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.history",
            str(n),
            "--url",
            self._url,
            "--namespace",
            ns,
            "--db",
            db,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"bench.history {n} exited with {proc.returncode}")
        return dict(json.loads(out))

    async def memory(self, n: int, agents: int) -> Figures:
        """RSS figures from child processes (``bench/memory.py``); no aio-pika counterpart."""
        figures: Figures = {}
        for mode, count in (("agent", n), ("agents", agents)):
            ns = f"{self.prefix}.{mode}"
            inboxes = ["consumer"] if mode == "agent" else [f"agent{k}" for k in range(count)]
            queue_type = self._queue_type()
            queues = {q for a in inboxes for q in wire.inbox_queue_names(ns, a, queue_type)}
            queues |= {wire.dead_queue_name(ns), wire.history_name(ns)}
            exchanges = {wire.exchange_name(ns), wire.dead_letter_exchange_name(ns)}
            for name in queues:
                self.track_queue(name)
            for name in exchanges:
                self.track_exchange(name)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.memory",
                mode,
                str(count),
                "--url",
                self._url,
                "--namespace",
                ns,
                "--queue-type",
                self.queue_type,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                async with asyncio.timeout(60.0 + count / 200.0):
                    out, _ = await proc.communicate()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            if proc.returncode != 0:
                raise RuntimeError(f"bench.memory {mode} {count} exited with {proc.returncode}")
            figures.update(json.loads(out))
            # The child deleted what it declared.
            self.queues -= queues
            self.exchanges -= exchanges
        return figures
