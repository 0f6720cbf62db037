"""The baseline: the workloads written directly against aio-pika, idiomatically.

Connection layout (the same rule applies to every implementation): one AMQP
connection per measured run, shared by all roles of the workload (producer and
consumer, RPC client and server), with separate channels per role: a publishing
channel with publisher confirms per sending role, and a consuming channel per
receiving role.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from bench import spec
from bench.base import Completion, Figures, Implementation, latency_figures, wait_budget

OP_TIMEOUT = 15.0
"""Seconds for one protocol operation (connect, declare, channel open, close, one RPC)."""

JSON = "application/json"


def _task_consumer(done: Completion) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    """Consumer callback: decode the body with pydantic, then ack."""

    async def on_message(message: AbstractIncomingMessage) -> None:
        try:
            spec.TaskBody.model_validate_json(message.body)
        except Exception as exc:
            await message.reject(requeue=False)
            done.fail(exc)
            return
        await message.ack()
        done.hit()

    return on_message


async def _acquire(sem: asyncio.Semaphore, timeout: float) -> None:
    if sem.locked():
        async with asyncio.timeout(timeout):
            await sem.acquire()
    else:
        await sem.acquire()


async def _publish_windowed(
    exchange: AbstractExchange,
    n: int,
    build: Callable[[int], tuple[aio_pika.Message, str]],
    *,
    window: int,
    timeout: float,
) -> None:
    """Publish ``n`` messages with at most ``window`` unconfirmed at any time.

    Returns when every publish is confirmed (ack) by the broker; raises on a nack,
    on an unroutable message (the channel must be opened with ``on_return_raises``),
    or when no confirm arrives for ``timeout`` seconds.
    """
    sem = asyncio.Semaphore(window)
    pending: set[asyncio.Task[Any]] = set()
    failures: list[BaseException] = []

    def on_done(task: asyncio.Task[Any]) -> None:
        pending.discard(task)
        sem.release()
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                failures.append(exc)
            elif not isinstance(task.result(), aiormq.spec.Basic.Ack):
                failures.append(RuntimeError(f"publish not confirmed: {task.result()!r}"))

    try:
        for i in range(n):
            await _acquire(sem, timeout)
            if failures:
                raise failures[0]
            message, routing_key = build(i)
            task = asyncio.create_task(exchange.publish(message, routing_key))
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


class _RpcClient:
    """Exclusive reply queue + futures keyed by correlation id (the aio-pika RPC pattern)."""

    def __init__(self, exchange: AbstractExchange, reply_to: str) -> None:
        self.exchange = exchange
        self.reply_to = reply_to
        self.futures: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self.futures.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    def fail_all(self, exc: BaseException) -> None:
        for future in self.futures.values():
            if not future.done():
                future.set_exception(exc)

    async def call(self, request: spec.RpcRequest, timeout: float) -> spec.RpcReply:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.futures[correlation_id] = future
        try:
            async with asyncio.timeout(timeout):
                await self.exchange.publish(
                    aio_pika.Message(
                        request.model_dump_json().encode(),
                        content_type=JSON,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        priority=spec.RPC_REQUEST_PRIORITY,
                        correlation_id=correlation_id,
                        reply_to=self.reply_to,
                    ),
                    spec.RPC_REQUEST_ROUTING_KEY,
                )
                body = await future
        finally:
            self.futures.pop(correlation_id, None)
        return spec.RpcReply.model_validate_json(body)


class AioPikaImplementation(Implementation):
    name = "aio-pika"

    def __init__(self) -> None:
        super().__init__()
        self._connection: AbstractConnection | None = None

    async def open(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self._connection = await aio_pika.connect(url, timeout=OP_TIMEOUT)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(OP_TIMEOUT):
                    await connection.close()

    # --- plumbing -----------------------------------------------------------------------
    @property
    def connection(self) -> AbstractConnection:
        if self._connection is None:
            raise RuntimeError("not open")
        return self._connection

    async def _channel(
        self, stack: contextlib.AsyncExitStack, *, confirms: bool, prefetch: int = 0
    ) -> AbstractChannel:
        async with asyncio.timeout(OP_TIMEOUT):
            # Publishing channels raise on unroutable (returned) messages.
            channel = await self.connection.channel(
                publisher_confirms=confirms, on_return_raises=confirms
            )
        stack.push_async_callback(self._close_channel, channel)
        if prefetch:
            await channel.set_qos(prefetch_count=prefetch, timeout=OP_TIMEOUT)
        return channel

    @staticmethod
    async def _close_channel(channel: AbstractChannel) -> None:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(OP_TIMEOUT):
                    await channel.close()

    def _cleanup_on_exit(
        self, stack: contextlib.AsyncExitStack, queues: list[str], exchanges: list[str]
    ) -> None:
        """Delete ``queues`` and ``exchanges`` (filled in later) when ``stack`` unwinds."""

        async def cleanup() -> None:
            if self._connection is None or self._connection.is_closed:
                return  # the harness sweeps with its own connection
            async with contextlib.AsyncExitStack() as inner:
                channel = await self._channel(inner, confirms=False)
                for name in queues:
                    await channel.queue_delete(name, timeout=OP_TIMEOUT)
                    self.queues.discard(name)
                for name in exchanges:
                    await channel.exchange_delete(name, timeout=OP_TIMEOUT)
                    self.exchanges.discard(name)

        stack.push_async_callback(cleanup)

    async def _topic_exchange(
        self, channel: AbstractChannel, exchanges: list[str]
    ) -> AbstractExchange:
        name = self.track_exchange(self.new_name("x"))
        exchanges.append(name)
        return await channel.declare_exchange(
            name, aio_pika.ExchangeType.TOPIC, durable=True, timeout=OP_TIMEOUT
        )

    async def _inbox(self, channel: AbstractChannel, role: str, queues: list[str]) -> AbstractQueue:
        """A durable inbox queue with native priority, bound to the topic exchange."""
        name = self.track_queue(self.new_name(role))
        queues.append(name)
        return await channel.declare_queue(
            name,
            durable=True,
            arguments=spec.inbox_arguments(self.queue_type),
            timeout=OP_TIMEOUT,
        )

    # --- workloads ----------------------------------------------------------------------
    async def pipe(self, n: int, payload: dict[str, Any]) -> Figures:
        task = spec.TaskBody.model_validate(payload)
        queues: list[str] = []
        exchanges: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            self._cleanup_on_exit(stack, queues, exchanges)
            pub = await self._channel(stack, confirms=True)
            sub = await self._channel(stack, confirms=False, prefetch=spec.PREFETCH)
            exchange = await self._topic_exchange(pub, exchanges)
            inbox = await self._inbox(sub, "inbox", queues)
            await inbox.bind(exchange.name, spec.PIPE_ROUTING_KEY, timeout=OP_TIMEOUT)
            done = Completion(n)
            await inbox.consume(_task_consumer(done), timeout=OP_TIMEOUT)

            def build(i: int) -> tuple[aio_pika.Message, str]:
                message = aio_pika.Message(
                    task.model_dump_json().encode(),
                    content_type=JSON,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    priority=spec.PIPE_PRIORITY,
                )
                return message, spec.PIPE_ROUTING_KEY

            budget = wait_budget(n)
            t0 = self.clock.start()
            await _publish_windowed(
                exchange, n, build, window=spec.PUBLISH_WINDOW, timeout=OP_TIMEOUT
            )
            t_end = await done.wait(budget)
            self.clock.stop(n)
        return {"msg_per_s": n / (t_end - t0)}

    async def _rpc_setup(
        self, stack: contextlib.AsyncExitStack, queues: list[str], exchanges: list[str]
    ) -> tuple[_RpcClient, list[BaseException]]:
        """Declare the topology, start the server and the client's reply consumer."""
        client_pub = await self._channel(stack, confirms=True)
        client_sub = await self._channel(stack, confirms=False, prefetch=spec.PREFETCH)
        server_pub = await self._channel(stack, confirms=True)
        server_sub = await self._channel(stack, confirms=False, prefetch=spec.PREFETCH)

        exchange = await self._topic_exchange(client_pub, exchanges)
        requests = await self._inbox(server_sub, "requests", queues)
        await requests.bind(exchange.name, spec.RPC_REQUEST_ROUTING_KEY, timeout=OP_TIMEOUT)

        reply_name = self.track_queue(self.new_name("replies"))
        queues.append(reply_name)
        replies = await client_sub.declare_queue(
            reply_name, exclusive=True, auto_delete=True, timeout=OP_TIMEOUT
        )
        client = _RpcClient(exchange, reply_name)
        await replies.consume(client.on_reply, no_ack=True, timeout=OP_TIMEOUT)

        errors: list[BaseException] = []
        reply_exchange = server_pub.default_exchange

        async def serve(message: AbstractIncomingMessage) -> None:
            try:
                request = spec.RpcRequest.model_validate_json(message.body)
                reply = spec.RpcReply(ok=True, result={"echo": request.params})
                await reply_exchange.publish(
                    aio_pika.Message(
                        reply.model_dump_json().encode(),
                        content_type=JSON,
                        correlation_id=message.correlation_id,
                    ),
                    routing_key=message.reply_to or "",
                    timeout=OP_TIMEOUT,
                )
                await message.ack()
            except Exception as exc:
                errors.append(exc)
                client.fail_all(exc)
                with contextlib.suppress(Exception):
                    await message.reject(requeue=False)

        await requests.consume(serve, timeout=OP_TIMEOUT)
        return client, errors

    async def rpc_seq(self, n: int) -> Figures:
        queues: list[str] = []
        exchanges: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            self._cleanup_on_exit(stack, queues, exchanges)
            client, errors = await self._rpc_setup(stack, queues, exchanges)
            latencies: list[float] = []
            t0 = self.clock.start()
            for i in range(n):
                started = time.perf_counter()
                await client.call(spec.RpcRequest(method="echo", params={"i": i}), OP_TIMEOUT)
                latencies.append(time.perf_counter() - started)
            elapsed = time.perf_counter() - t0
            self.clock.stop(n)
            if errors:
                raise RuntimeError("server failed") from errors[0]
        return latency_figures(latencies, elapsed)

    async def rpc_conc(self, n: int, in_flight: int) -> Figures:
        queues: list[str] = []
        exchanges: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            self._cleanup_on_exit(stack, queues, exchanges)
            client, errors = await self._rpc_setup(stack, queues, exchanges)
            latencies: list[float] = []
            failures: list[BaseException] = []
            sem = asyncio.Semaphore(in_flight)
            pending: set[asyncio.Task[None]] = set()

            async def one(i: int) -> None:
                started = time.perf_counter()
                await client.call(spec.RpcRequest(method="echo", params={"i": i}), OP_TIMEOUT)
                latencies.append(time.perf_counter() - started)

            def on_done(task: asyncio.Task[None]) -> None:
                pending.discard(task)
                sem.release()
                exc = None if task.cancelled() else task.exception()
                if exc is not None:
                    failures.append(exc)

            try:
                t0 = self.clock.start()
                for i in range(n):
                    await _acquire(sem, OP_TIMEOUT)
                    if failures:
                        raise failures[0]
                    task = asyncio.create_task(one(i))
                    pending.add(task)
                    task.add_done_callback(on_done)
                if pending:
                    async with asyncio.timeout(OP_TIMEOUT):
                        await asyncio.wait(set(pending))
                elapsed = time.perf_counter() - t0
                self.clock.stop(n)
            finally:
                for task in pending:
                    task.cancel()
            if failures:
                raise failures[0]
            if errors:
                raise RuntimeError("server failed") from errors[0]
        return latency_figures(latencies, elapsed)

    async def fanout(self, n: int) -> Figures:
        task = spec.TaskBody.model_validate(spec.make_payload())
        queues: list[str] = []
        exchanges: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            self._cleanup_on_exit(stack, queues, exchanges)
            pub = await self._channel(stack, confirms=True)
            exchange = await self._topic_exchange(pub, exchanges)
            total = n * spec.FANOUT_COPIES
            done = Completion(total)
            on_message = _task_consumer(done)
            for k, binding in enumerate(spec.FANOUT_BINDINGS):
                sub = await self._channel(stack, confirms=False, prefetch=spec.PREFETCH)
                queue = await self._inbox(sub, f"sub{k}", queues)
                await queue.bind(exchange.name, binding, timeout=OP_TIMEOUT)
                await queue.consume(on_message, timeout=OP_TIMEOUT)

            def build(i: int) -> tuple[aio_pika.Message, str]:
                message = aio_pika.Message(
                    task.model_dump_json().encode(),
                    content_type=JSON,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    priority=spec.fanout_priority(i),
                )
                return message, spec.fanout_routing_key(i)

            budget = wait_budget(total)
            t0 = self.clock.start()
            await _publish_windowed(
                exchange, n, build, window=spec.PUBLISH_WINDOW, timeout=OP_TIMEOUT
            )
            t_end = await done.wait(budget)
            self.clock.stop(n)
        return {"deliveries_per_s": total / (t_end - t0)}
