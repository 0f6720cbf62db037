"""Fault scenarios 1-12 of issue 6, counted like Jepsen (see ledger.py).

Each scenario pushes messages through an agent on a private RabbitMQ node, breaks
something at one third, and lets :class:`ledger.Ledger` judge the history: nothing
confirmed may be lost, nothing unexpected may arrive, duplicates are counted. The
sender retries a send that raised (a user-level retry loop: at-least-once), so
duplicates are allowed and reported. The numbers go to results/latest.json, from
which docs/reliability.md's table is made (``python tests/reliability/report.py``).

No test sleeps to synchronise. The only sleeps are the sender's pacing and retry
backoff, handlers that simulate work (7) or hang (9), the length of a fault that *is*
a duration (the proxy holding bytes for 8 s, the broker unreachable for 5 s), and the
teardown polling a stream that is still recovering (nothing signals it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from ledger import Ledger, Report, write_result
from private_broker import PrivateBroker
from tcp_proxy import TCPProxy

from amqp_agents import (
    AgentsError,
    InboxFullError,
    Message,
    MessagePassingAgent,
    MessageQueue,
    MessageType,
    RetryPolicy,
    TaskHandle,
    TopologyError,
    wire,
)
from amqp_agents.topology import delete_namespace

pytestmark = pytest.mark.reliability

log = logging.getLogger(__name__)

N = 3000
"""Messages per main scenario; the fault comes after N // 3 confirms."""
SEND_RATE = 1000.0
"""Messages per second the senders aim at, so a fault lands mid-stream."""
CLI_FAULT_RATE = 400.0
"""The rate for faults started through rabbitmqctl, which takes a second or two."""
SENDERS = 8
"""Concurrent sender tasks: several sends are in flight when the fault hits."""
PUBLISH_TIMEOUT_S = 3.0
CANARY_DEADLINE_S = 5.0
TASK_TIMEOUT_S = 15.0
PROBES = 4
"""send_task calls pending across each fault."""
DRAIN_TIMEOUT_S = 30.0
SINK = "sink"
HEARTBEAT_S = 1
"""Heartbeat of the connections that go through the proxy. aiormq gives up on a
silent link after (heartbeat + 1) * 3 s: 6 s, inside the proxy's 8 s hold."""


def clock() -> float:
    return time.monotonic()


# -- the rig: a sender, an agent that records deliveries, a requester --------------------


class SinkAgent(MessagePassingAgent):
    """Records each handled notification in the ledger; answers tasks once released."""

    def __init__(self, agent_id: str, queue: MessageQueue, ledger: Ledger, **kw: Any) -> None:
        super().__init__(agent_id, queue, **kw)
        self.ledger = ledger
        self.release_tasks = asyncio.Event()
        self.on(MessageType.NOTIFICATION)(self._record)

    async def _record(self, message: Message) -> None:
        self.ledger.delivered(message.id)

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        async with asyncio.timeout(TASK_TIMEOUT_S):
            await self.release_tasks.wait()
        return f"done {task}"


@dataclass
class Rig:
    """One scenario's namespace, connections and agents."""

    name: str
    ns: str
    ledger: Ledger
    sender: MessageQueue
    receiver: MessageQueue
    agent: SinkAgent
    requester: MessagePassingAgent


MakeRig = Callable[..., Awaitable[Rig]]

PERSIST_DECLARATIONS = "begin ok = mnesia:sync_log(), [dets:sync(T) || T <- dets:all()] end."
"""RabbitMQ 3.10 writes declarations to disk lazily: a node killed -9 within about a
second of a queue's declaration can forget the queue (mnesia's log), and of its first
stream's the stream coordinator (a dets table), so that every stream (our history)
stays "down" for good. Scenarios that kill -9 right after creating their namespace
flush both first (docs/reliability.md)."""


@pytest.fixture
async def make_rig(
    private_broker: PrivateBroker, request: pytest.FixtureRequest
) -> AsyncIterator[MakeRig]:
    """Factory of rigs on the private node; stops, closes and deletes what it made."""
    made: list[Rig] = []

    async def factory(
        name: str,
        *,
        url: str | None = None,
        start: bool = True,
        before_kill9: bool = False,
        agent_options: dict[str, Any] | None = None,
        **queue_options: Any,
    ) -> Rig:
        ns = f"rel-{name}-{uuid.uuid4().hex[:6]}"
        queue_options.setdefault("publish_timeout_s", PUBLISH_TIMEOUT_S)
        queues = []
        for role in ("sender", "receiver"):
            queue = MessageQueue(
                url or private_broker.url,
                namespace=ns,
                connection_name=f"{request.node.name} {role}",
                **queue_options,
            )
            await queue.connect()
            queues.append(queue)
        ledger = Ledger(name)
        agent = SinkAgent(SINK, queues[1], ledger, concurrency=16, **(agent_options or {}))
        requester = MessagePassingAgent("req", queues[0])
        rig = Rig(name, ns, ledger, queues[0], queues[1], agent, requester)
        made.append(rig)
        await queues[1].ensure_inbox(SINK)
        if before_kill9:
            await asyncio.to_thread(private_broker.eval, PERSIST_DECLARATIONS)
        if start:
            await agent.start_consuming()
        return rig

    yield factory
    await _restore_broker(private_broker)
    for rig in made:
        await rig.agent.stop()
        declared = rig.sender.declared_queues | rig.receiver.declared_queues
        await rig.sender.close()
        await rig.receiver.close()
        await _delete_namespace(private_broker.url, rig.ns, sorted(declared))


async def _restore_broker(broker: PrivateBroker) -> None:
    """Bring the node back if a failed test left it killed (tests that stop the app or
    raise an alarm undo it themselves, in ``finally``)."""
    if not broker.is_running():
        await asyncio.to_thread(broker.restart_after_kill)


async def _delete_namespace(url: str, ns: str, queues: list[str]) -> None:
    """Delete a scenario's namespace; after a kill -9 its history stream may need a few
    seconds to come back before it can be deleted, so retry (bounded)."""
    give_up = clock() + 30
    while True:
        try:
            connection = await aio_pika.connect(url, timeout=10)
            try:
                channel = await connection.channel()
                await asyncio.wait_for(delete_namespace(channel, ns, queues), 30)
                return
            finally:
                await connection.close()
        except (aio_pika.exceptions.AMQPError, ConnectionError) as exc:
            if clock() > give_up:
                log.warning("namespace %s not deleted: %r", ns, exc)
                return
            await asyncio.sleep(0.5)  # polling: nothing signals "the stream is back"


@pytest.fixture
async def proxy(private_broker: PrivateBroker) -> AsyncIterator[TCPProxy]:
    async with TCPProxy("127.0.0.1", private_broker.amqp_port) as running:
        yield running


def proxied_url(proxy: TCPProxy, broker: PrivateBroker) -> str:
    return proxy.url_for(broker.url) + f"?heartbeat={HEARTBEAT_S}"


# -- sending --------------------------------------------------------------------------


def message_id(rig: Rig, index: int) -> str:
    return f"{rig.name}-{index:05d}"


async def send_with_retry(
    queue: MessageQueue, ledger: Ledger, mid: str, *, deadline_s: float = 60.0
) -> None:
    """Send ``mid`` to the sink until a send returns; every attempt is in the ledger.

    Only typed errors (``AgentsError``) are retried: anything else is a bug in the
    library's error mapping and fails the test.
    """
    give_up = clock() + deadline_s
    backoff = 0.02
    while True:
        message = Message(
            id=mid, sender="load", recipient=SINK, type=MessageType.NOTIFICATION, content=mid
        )
        started = ledger.attempt(mid)
        try:
            await queue.send(message)
        except AgentsError as exc:
            ledger.failed(mid, exc, started)
            if clock() > give_up:
                raise
            await asyncio.sleep(backoff)  # pacing the retries while the broker is away
            backoff = min(backoff * 2, 0.25)
        else:
            ledger.confirmed(mid, started)
            return


async def run_load(rig: Rig, n: int = N, rate: float = SEND_RATE, first: int = 0) -> None:
    """Send messages ``first`` .. ``n - 1`` to the sink from ``SENDERS`` tasks, paced at
    ``rate``/s."""
    indices = iter(range(first, n))
    start = clock()

    async def worker() -> None:
        for index in indices:
            if (ahead := start + (index - first) / rate - clock()) > 0:
                await asyncio.sleep(ahead)  # pacing, so the fault lands mid-stream
            await send_with_retry(rig.sender, rig.ledger, message_id(rig, index))

    await asyncio.gather(*(worker() for _ in range(SENDERS)))


async def start_probes(rig: Rig) -> list[TaskHandle]:
    """``PROBES`` send_task calls whose handlers wait until the fault is over."""
    return [
        await rig.requester.send_task(
            SINK, f"probe-{i}", wait_for_result=False, timeout=TASK_TIMEOUT_S
        )
        for i in range(PROBES)
    ]


async def probe_outcomes(handles: list[TaskHandle]) -> Counter[str]:
    """Each pending send_task got its result or raised a typed error, within its timeout."""

    async def outcome(handle: TaskHandle) -> str:
        started = clock()
        try:
            await handle.result()
            result = "result"
        except AgentsError as exc:
            result = type(exc).__name__
        assert clock() - started <= TASK_TIMEOUT_S + 1.0, f"send_task hung: {result}"
        return result

    return Counter(await asyncio.gather(*(outcome(h) for h in handles)))


async def send_canary(rig: Rig, deadline_s: float = CANARY_DEADLINE_S) -> str:
    """After the fault: a canary must be delivered within ``deadline_s`` of its end."""
    assert rig.ledger.fault_end is not None
    canary = f"{rig.name}-canary"
    remaining = deadline_s - (clock() - rig.ledger.fault_end)
    async with asyncio.timeout(max(remaining, 0.0)):
        await send_with_retry(rig.sender, rig.ledger, canary)
        await rig.ledger.wait_delivered([canary], timeout=deadline_s)
    return canary


async def drain(
    rig: Rig,
    broker: PrivateBroker,
    stop: Callable[[], Awaitable[None]] | None = None,
    *,
    settle: bool = True,
) -> None:
    """Wait until every confirmed message was delivered (or give up after a bound;
    ``settle=False``: do not wait), stop the agent (``stop``, default the rig's), then
    take whatever is left in the inbox: it counts as delivered."""
    try:
        if settle:
            await rig.ledger.wait_for(lambda: not rig.ledger.undelivered(), DRAIN_TIMEOUT_S)
    except TimeoutError:
        log.error("%s: %d confirmed messages undelivered", rig.name, len(rig.ledger.undelivered()))
    await (stop or rig.agent.stop)()
    connection = await aio_pika.connect(broker.url, timeout=10)
    try:
        channel = await connection.channel()
        inbox = await channel.get_queue(wire.inbox_name(rig.ns, SINK))
        while (leftover := await inbox.get(no_ack=True, fail=False, timeout=5)) is not None:
            if leftover.message_id and leftover.type == MessageType.NOTIFICATION.value:
                rig.ledger.delivered(leftover.message_id)
    finally:
        await connection.close()


def verdict(rig: Rig, report: Report) -> None:
    """The guarantees of scenarios 1-6, with the whole report in every message."""
    write_result(report)
    log.warning("%s", report.summary())
    assert report.lost == 0, report.summary()
    assert report.unexpected == 0, report.summary()
    assert report.confirmed >= report.n, report.summary()
    assert report.max_send_s <= PUBLISH_TIMEOUT_S + 1.0, report.summary()
    assert report.canary_ms is not None and report.canary_ms <= CANARY_DEADLINE_S * 1000


# -- scenarios 1-6: the broker or the network breaks under load -------------------------


Fault = Callable[[Rig], Awaitable[str]]
"""Injects a fault and returns once it is over, with a note on what happened."""


async def run_fault_scenario(
    rig: Rig,
    broker: PrivateBroker,
    inject: Fault,
    *,
    hits_when_noticed: bool = False,
    rate: float = SEND_RATE,
    before_drain: Callable[[], Awaitable[None]] | None = None,
) -> Report:
    """Load, fault at one third, canary, drain, report.

    ``hits_when_noticed``: the fault takes effect some time into ``inject`` (a
    rabbitmqctl command starts slowly); it then counts from the first connection
    that noticed it, so publishes confirmed before it do not pass for a recovery.
    ``inject`` may also mark the moment itself (``rig.ledger.fault()``). Scenarios
    whose fault starts through rabbitmqctl send at a lower ``rate``, so the fault still
    lands mid-stream.
    """
    noticed: list[float] = []
    for queue in (rig.sender, rig.receiver):
        queue.connection.close_callbacks.add(lambda *_: noticed.append(clock()))
    load = asyncio.create_task(run_load(rig, rate=rate))
    try:
        await rig.ledger.wait_for(lambda: len(rig.ledger.confirms) >= N // 3, 30)
        probes = await start_probes(rig)
        injected_at = clock()
        note = await inject(rig)
        rig.ledger.fault_over()
        if rig.ledger.fault_at is None:  # else inject marked the moment itself
            rig.ledger.fault(
                at=min(noticed, default=injected_at) if hits_when_noticed else injected_at
            )
        hit_at = rig.ledger.fault_at
        assert hit_at is not None
        before = rig.ledger.confirmed_before(hit_at)
        assert before < N, f"the fault hit after the load ({before} confirms)"
        note += f"; hit after {before} confirms"
        rig.agent.release_tasks.set()
        canary = await send_canary(rig)
        outcomes = await probe_outcomes(probes)
        await asyncio.wait_for(load, 120)
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
    assert len(rig.ledger.confirms) - 1 >= N, "the load did not finish"
    if before_drain is not None:
        await before_drain()
    await drain(rig, broker)
    tasks = ", ".join(f"{count} {kind}" for kind, count in sorted(outcomes.items()))
    return rig.ledger.report(N, canary=canary, note=f"{note}; send_task: {tasks}")


async def test_1_kill9_and_restart(make_rig: MakeRig, private_broker: PrivateBroker) -> None:
    rig = await make_rig("1-kill9", before_kill9=True)

    async def inject(_: Rig) -> str:
        await asyncio.to_thread(private_broker.kill9)
        took = await asyncio.to_thread(private_broker.restart_after_kill)
        # A process starting together with the broker connects, although the broker's
        # queues (the history stream) come back a moment after it accepts connections.
        started = clock()
        async with MessageQueue(private_broker.url, namespace=rig.ns) as fresh:
            await fresh.ensure_inbox(SINK)
        return f"broker restarted in {took:.1f}s, a new client ready {clock() - started:.1f}s later"

    verdict(rig, await run_fault_scenario(rig, private_broker, inject, hits_when_noticed=True))


async def test_2_stop_app_start_app(make_rig: MakeRig, private_broker: PrivateBroker) -> None:
    rig = await make_rig("2-stop-app")

    async def inject(_: Rig) -> str:
        await asyncio.to_thread(private_broker.stop_app)
        await asyncio.to_thread(private_broker.start_app)
        return "app stopped and started"

    report = await run_fault_scenario(
        rig, private_broker, inject, hits_when_noticed=True, rate=CLI_FAULT_RATE
    )
    verdict(rig, report)


async def test_3_close_all_connections(make_rig: MakeRig, private_broker: PrivateBroker) -> None:
    rig = await make_rig("3-close-all")

    async def inject(_: Rig) -> str:
        await asyncio.to_thread(private_broker.close_all_connections)
        return "connection.close to every client"

    report = await run_fault_scenario(
        rig, private_broker, inject, hits_when_noticed=True, rate=CLI_FAULT_RATE
    )
    verdict(rig, report)


async def test_4_proxy_resets_every_connection(
    make_rig: MakeRig, private_broker: PrivateBroker, proxy: TCPProxy
) -> None:
    rig = await make_rig("4-proxy-reset", url=proxied_url(proxy, private_broker))

    async def inject(_: Rig) -> str:
        count = proxy.reset_all()
        return f"RST on {count} connections"

    verdict(rig, await run_fault_scenario(rig, private_broker, inject))


HOLD_S = 8.0


async def test_5_proxy_holds_bytes_heartbeat_notices(
    make_rig: MakeRig, private_broker: PrivateBroker, proxy: TCPProxy
) -> None:
    rig = await make_rig("5-proxy-hold", url=proxied_url(proxy, private_broker))
    noticed = asyncio.Event()
    rig.receiver.connection.close_callbacks.add(lambda *_: noticed.set())

    async def inject(_: Rig) -> str:
        proxy.hold()
        held_at = clock()
        try:
            async with asyncio.timeout(HOLD_S):
                await noticed.wait()
            noticed_after = clock() - held_at
            await asyncio.sleep(HOLD_S - noticed_after)  # the fault lasts HOLD_S
        finally:
            proxy.release()
        return f"link held {HOLD_S:.0f}s; heartbeat noticed after {noticed_after:.1f}s"

    verdict(rig, await run_fault_scenario(rig, private_broker, inject))


OUTAGE_S = 5.0


async def test_6_broker_unreachable(
    make_rig: MakeRig, private_broker: PrivateBroker, proxy: TCPProxy
) -> None:
    rig = await make_rig("6-unreachable", url=proxied_url(proxy, private_broker))

    async def inject(_: Rig) -> str:
        proxy.refuse(True)
        count = proxy.reset_all()
        try:
            await asyncio.sleep(OUTAGE_S)  # the fault lasts OUTAGE_S
        finally:
            proxy.refuse(False)
        return f"{count} connections reset, new ones refused for {OUTAGE_S:.0f}s"

    verdict(rig, await run_fault_scenario(rig, private_broker, inject))


# -- the negative control: the checker can fail ------------------------------------------


CONTROL_N = 300


async def test_negative_control_unconfirmed_transient_messages_are_lost_on_kill9(
    make_rig: MakeRig, private_broker: PrivateBroker
) -> None:
    """Confirms off and transient messages, then kill -9: the ledger must see loss.

    Made deterministic on purpose: the agent is not consuming while the messages sit
    in its (durable) inbox, and they are non-persistent, so the restart drops all of
    them. A publisher without confirms counts a message as sent when the call
    returns; that is what the ledger records as "confirmed" here.
    """
    # Classic queues: a quorum queue keeps even transient messages across a crash.
    rig = await make_rig(
        "control-no-confirms", start=False, before_kill9=True, queue_type="classic"
    )
    connection = await aio_pika.connect(private_broker.url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=False)
        exchange = await channel.get_exchange(wire.exchange_name(rig.ns))
        for index in range(CONTROL_N):
            mid = message_id(rig, index)
            started = rig.ledger.attempt(mid)
            await exchange.publish(
                aio_pika.Message(
                    mid.encode(),
                    message_id=mid,
                    type=MessageType.NOTIFICATION.value,
                    content_type=wire.CONTENT_TYPE,
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=f"notification.2.load.{SINK}",
            )
            rig.ledger.confirmed(mid, started)
        # Every message reached the inbox before the crash: nothing is in flight.
        counts = await asyncio.to_thread(private_broker.list_queues)
        assert counts[wire.inbox_name(rig.ns, SINK)] == CONTROL_N
    finally:
        await connection.close()

    rig.ledger.fault()
    await asyncio.to_thread(private_broker.kill9)
    await asyncio.to_thread(private_broker.restart_after_kill)
    rig.ledger.fault_over()
    await rig.agent.start_consuming()
    # The canary is behind anything that survived (same priority, FIFO): once it is
    # delivered, every survivor has been too. (Its timing is not what the control
    # checks, hence the longer deadline.)
    canary = await send_canary(rig, deadline_s=30)
    await drain(rig, private_broker, settle=False)  # nothing is left behind the canary
    report = rig.ledger.report(
        CONTROL_N,
        canary=canary,
        note="negative control: confirms off, transient messages, kill -9; must lose",
    )
    write_result(report)
    assert report.lost == CONTROL_N, report.summary()
    assert report.unexpected == 0, report.summary()


# -- helpers of scenarios 7-12 ------------------------------------------------------------


class LogWatch(logging.Handler):
    """Collects a logger's records and wakes waiters on each one.

    The agent's log is how it tells an operator about a fault (a channel closed by the
    broker, a cancelled consumer), so tests await those lines instead of sleeping.
    """

    def __init__(self, logger: str) -> None:
        super().__init__(level=logging.DEBUG)
        self.logger = logging.getLogger(logger)
        self.records: list[tuple[float, logging.LogRecord]] = []
        self._changed = asyncio.Event()
        self._old_level = self.logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((clock(), record))
        self._changed.set()
        self._changed = asyncio.Event()

    def matching(self, text: str) -> list[tuple[float, logging.LogRecord]]:
        return [(at, r) for at, r in self.records if text in r.getMessage()]

    async def wait_for(self, text: str, timeout: float, count: int = 1) -> float:
        """Wait until ``count`` records contain ``text``; returns when the last came."""
        async with asyncio.timeout(timeout):
            while len(found := self.matching(text)) < count:
                await self._changed.wait()
        return found[count - 1][0]

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        """Wait until ``done()`` holds, asking again at each record."""
        async with asyncio.timeout(timeout):
            while not done():
                await self._changed.wait()

    def __enter__(self) -> LogWatch:
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *_: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._old_level)


AGENT_PROCESS = Path(__file__).with_name("agent_process.py")
KILLED_CONCURRENCY = 32
KILLED_WORK_MS = 10
"""Each handler of the killed agent works this long: at SEND_RATE about 10 run at once
(and the agent keeps up, so the canary after the restart has no long queue ahead)."""


class AgentProcess:
    """The sink agent in a child process (agent_process.py); its stdout feeds the ledger."""

    def __init__(
        self,
        rig: Rig,
        url: str,
        log_path: Path,
        dedup_window: int,
        *,
        concurrency: int = KILLED_CONCURRENCY,
        work_ms: float = KILLED_WORK_MS,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_args``: more options of agent_process.py (``--queue-type``, ``--exit-on``)."""
        self.rig = rig
        self.url = url
        self.log_path = log_path
        self.dedup_window = dedup_window
        self.concurrency = concurrency
        self.work_ms = work_ms
        self.extra_args = tuple(extra_args)
        self.started: set[str] = set()
        self.effects: Counter[str] = Counter()
        self.ready = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as stderr:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(AGENT_PROCESS),
                self.url,
                self.rig.ns,
                SINK,
                "--concurrency",
                str(self.concurrency),
                "--dedup-window",
                str(self.dedup_window),
                "--work-ms",
                str(self.work_ms),
                *self.extra_args,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        self._reader = asyncio.create_task(self._read())
        ready = asyncio.create_task(self.ready.wait())
        try:
            # Ready, or gone before it (a message that ends it can come first: C5).
            async with asyncio.timeout(timeout):
                await asyncio.wait((ready, self._reader), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            event, _, mid = raw.decode().strip().partition(" ")
            if event == "ready":
                self.ready.set()
            elif event == "start":
                self.started.add(mid)
                self.rig.ledger.touch()
            elif event == "effect":
                self.effects[mid] += 1
                self.rig.ledger.delivered(mid)

    def in_flight(self) -> set[str]:
        """Messages whose handler started and has not had its side effect (yet)."""
        return self.started - self.effects.keys()

    async def exited(self) -> int:
        """Wait until the process has ended by itself and its last lines are read;
        returns its exit status."""
        assert self._proc is not None and self._reader is not None
        status = await self._proc.wait()
        await asyncio.wait_for(self._reader, 10)
        return status

    async def kill(self) -> None:
        """SIGKILL, then wait until it is gone and its last lines are read."""
        assert self._proc is not None and self._reader is not None
        os.kill(self._proc.pid, signal.SIGKILL)
        await asyncio.wait_for(self._proc.wait(), 10)
        await asyncio.wait_for(self._reader, 10)

    async def terminate(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._proc.wait(), 30)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)


# -- 7: the agent's process dies mid-handler ------------------------------------------


async def test_7_agent_process_killed_mid_handler(
    make_rig: MakeRig, private_broker: PrivateBroker, tmp_path: Path
) -> None:
    """Every unfinished message is redelivered to the next process.

    The child runs with a dedup window, and the test shows what it can and cannot do:
    the window lives in the process's memory, so the new process does not know what
    the killed one finished. Messages whose side effect happened but whose ack had not
    left the killed process (at most its prefetch, ``concurrency``) run again.
    """
    rig = await make_rig("7-agent-kill9", start=False)
    first = AgentProcess(rig, private_broker.url, tmp_path / "agent1.log", dedup_window=N)
    second = AgentProcess(rig, private_broker.url, tmp_path / "agent2.log", dedup_window=N)
    await first.start()
    load = asyncio.create_task(run_load(rig))
    try:
        await rig.ledger.wait_for(
            lambda: sum(first.effects.values()) >= N // 3 and bool(first.in_flight()), 60
        )
        await first.kill()
        rig.ledger.fault()
        unfinished = first.in_flight()
        await second.start()
        rig.ledger.fault_over()
        canary = await send_canary(rig)
        await asyncio.wait_for(load, 120)
    except BaseException:
        await second.terminate()
        raise
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
    await drain(rig, private_broker, stop=second.terminate)
    report = rig.ledger.report(
        N,
        canary=canary,
        recovery_of="delivery",
        note=(
            f"agent process killed with {len(unfinished)} handlers unfinished; "
            "recovery includes starting a new process"
        ),
    )
    write_result(report)
    assert report.lost == 0, report.summary()
    assert report.unexpected == 0, report.summary()
    assert unfinished, "the kill found no handler in flight: the scenario did not bite"
    assert unfinished <= second.effects.keys(), "an unfinished message was not redelivered"
    twice = {mid for mid, count in rig.ledger.deliveries.items() if count > 1}
    # Only messages the killed process had finished but not acknowledged run twice.
    assert twice <= first.effects.keys(), twice - first.effects.keys()
    assert len(twice) <= KILLED_CONCURRENCY, report.summary()
    assert all(count == 1 for count in second.effects.values()), "duplicates within one process"


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_7b_dedup_window_runs_each_side_effect_once_within_a_process(
    make_rig: MakeRig, private_broker: PrivateBroker, proxy: TCPProxy, queue_type: str
) -> None:
    """With de-duplication on, redeliveries (a reset connection) and late duplicates
    from the sender (a retry after a lost confirm) never run a side effect twice."""
    rig = await make_rig(
        f"7b-dedup-in-process-{queue_type}",
        url=proxied_url(proxy, private_broker),
        agent_options={"dedup_window": 2 * N},
        queue_type=queue_type,
    )
    resent = [message_id(rig, index) for index in range(0, N, 10)]

    async def inject(_: Rig) -> str:
        count = proxy.reset_all()
        return f"RST on {count} connections"

    async def resend_late() -> None:
        # Each resent copy must have been skipped before drain() stops the agent: a copy
        # still in the inbox then would count as delivered. Counting all skips is not
        # enough, as the reset's redeliveries are skipped too (and may be resent ids).
        since = len(watch.records)
        for mid in resent:  # as a sender that retries after a confirm it never got
            await send_with_retry(rig.sender, rig.ledger, mid)
        skips = {f"duplicate of {mid} skipped" for mid in resent}
        await watch.wait_until(
            lambda: skips <= {r.getMessage().partition(": ")[2] for _, r in watch.records[since:]},
            timeout=30,
        )

    with LogWatch("amqp_agents.agent") as watch:
        report = await run_fault_scenario(rig, private_broker, inject, before_drain=resend_late)
    skipped = len(watch.matching("duplicate of"))
    report = Report(**{**report.__dict__, "note": f"{report.note}; {skipped} duplicates skipped"})
    verdict(rig, report)
    dups = [m for m, c in rig.ledger.deliveries.items() if c > 1]
    assert report.duplicated == 0, (report.summary(), dups)
    assert skipped >= len(resent)


# -- 8: a handler failing for 10 % of messages ------------------------------------------


async def test_8_failing_handler_processed_plus_dead_lettered_is_n(
    make_rig: MakeRig, private_broker: PrivateBroker
) -> None:
    rig = await make_rig("8-failing-handler", agent_options={"retry": RetryPolicy(3, (0.05, 0.1))})
    failing = {message_id(rig, index) for index in range(0, N, 10)}
    calls: Counter[str] = Counter()
    reasons: Counter[str] = Counter()

    @rig.agent.on(MessageType.NOTIFICATION)
    async def handler(message: Message) -> None:
        calls[message.id] += 1
        if message.id in failing:
            raise ValueError(f"no way to handle {message.id}")
        rig.ledger.delivered(message.id)

    connection = await aio_pika.connect(private_broker.url, timeout=10)
    try:
        channel = await connection.channel()
        dead = await channel.get_queue(wire.dead_queue_name(rig.ns))

        async def on_dead(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
            reasons[str((incoming.headers or {}).get(wire.H_DEAD_REASON))] += 1
            rig.ledger.dead_lettered(incoming.message_id or "?")
            await incoming.ack()

        await dead.consume(on_dead)
        await run_load(rig)
        await rig.ledger.wait_for(lambda: not rig.ledger.undelivered(), DRAIN_TIMEOUT_S)
    finally:
        await connection.close()
    await drain(rig, private_broker)
    processed, dead_ids = rig.ledger.deliveries.keys(), rig.ledger.dead_letters.keys()
    report = rig.ledger.report(
        N,
        note=(
            f"every 10th message fails 3 attempts: {len(processed)} processed + "
            f"{len(dead_ids)} dead-lettered = {len(processed) + len(dead_ids)}"
        ),
    )
    write_result(report)
    assert report.lost == 0 and report.unexpected == 0, report.summary()
    assert len(processed) + len(dead_ids) == N, report.summary()
    assert dead_ids == failing and not processed & dead_ids
    assert reasons == {"handler failed": len(failing)}
    assert report.duplicated == 0 and max(rig.ledger.dead_letters.values()) == 1
    assert all(calls[mid] == 3 for mid in failing), {m: calls[m] for m in failing if calls[m] != 3}


# -- 9: consumer timeout on the broker ---------------------------------------------------


CONSUMER_TIMEOUT_MS = 3000
N_TIMEOUT = 1000


async def test_9_consumer_timeout_channel_closed_message_redelivered_agent_goes_on(
    make_rig: MakeRig, private_broker: PrivateBroker
) -> None:
    # consumer_timeout is read when a channel opens: set it before the agent starts.
    await asyncio.to_thread(private_broker.set_consumer_timeout, CONSUMER_TIMEOUT_MS)
    try:
        rig = await make_rig("9-consumer-timeout", start=False)
        stuck = message_id(rig, N_TIMEOUT // 3)
        calls: Counter[str] = Counter()

        @rig.agent.on(MessageType.NOTIFICATION)
        async def handler(message: Message) -> None:
            calls[message.id] += 1
            if message.id == stuck and calls[stuck] == 1:
                # A handler stuck far longer than the broker waits for its ack; it is
                # cancelled when the broker closes the channel.
                await asyncio.sleep(CONSUMER_TIMEOUT_MS / 1000 * 10)
            rig.ledger.delivered(message.id)

        with LogWatch("amqp_agents.agent") as watch:
            await rig.agent.start_consuming()
            load = asyncio.create_task(run_load(rig, n=N_TIMEOUT))
            try:
                tick_s = private_broker.channel_tick_interval_ms / 1000
                closed_at = await watch.wait_for(
                    "consumer channel closed", timeout=CONSUMER_TIMEOUT_MS / 1000 + tick_s + 10
                )
                rig.ledger.fault(at=closed_at)
                rig.ledger.fault_over(at=closed_at)
                canary = await send_canary(rig)
                await asyncio.wait_for(load, 60)
            finally:
                load.cancel()
                await asyncio.gather(load, return_exceptions=True)
            await drain(rig, private_broker)
        (_, record), *_ = watch.matching("consumer channel closed")
    finally:
        await asyncio.to_thread(
            private_broker.set_consumer_timeout, private_broker.consumer_timeout_ms
        )
    report = rig.ledger.report(
        N_TIMEOUT,
        canary=canary,
        recovery_of="delivery",
        note=f"consumer_timeout {CONSUMER_TIMEOUT_MS} ms; one handler stuck",
    )
    write_result(report)
    assert "PRECONDITION_FAILED" in record.getMessage(), record.getMessage()
    assert record.levelno == logging.WARNING
    assert calls[stuck] == 2, "the stuck message was not redelivered exactly once"
    assert report.lost == 0 and report.unexpected == 0, report.summary()
    assert report.canary_ms is not None and report.canary_ms <= CANARY_DEADLINE_S * 1000


# -- 10: inbox length limit ---------------------------------------------------------------


INBOX_LIMIT = 500


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_10_full_inbox_rejects_publish_with_a_typed_error(
    make_rig: MakeRig, private_broker: PrivateBroker, queue_type: str
) -> None:
    rig = await make_rig(
        f"10-inbox-full-{queue_type}",
        start=False,
        inbox_max_length=INBOX_LIMIT,
        queue_type=queue_type,
    )
    rejected: list[str] = []
    for index in range(2 * INBOX_LIMIT):
        mid = message_id(rig, index)
        message = Message(
            id=mid, sender="load", recipient=SINK, type=MessageType.NOTIFICATION, content=mid
        )
        started = rig.ledger.attempt(mid)
        try:
            await rig.sender.send(message)
        except InboxFullError as exc:
            rig.ledger.failed(mid, exc, started)
            rejected.append(mid)
        else:
            rig.ledger.confirmed(mid, started)
    # A quorum lane learns it is full from the enqueue that filled it: it takes one
    # message over its limit (RabbitMQ 3.10), a classic inbox none.
    limit = INBOX_LIMIT + (1 if queue_type == "quorum" else 0)
    kept = [message_id(rig, index) for index in range(limit)]
    # Reject-publish: the newest are refused; drop-head would have kept them instead.
    assert sorted(rig.ledger.confirms) == kept
    assert rejected == [message_id(rig, i) for i in range(limit, 2 * INBOX_LIMIT)]

    await rig.agent.start_consuming()
    await rig.ledger.wait_delivered(kept, timeout=DRAIN_TIMEOUT_S)
    # Once there is room again, sending resumes.
    await run_load(rig, n=3 * INBOX_LIMIT, first=2 * INBOX_LIMIT)
    await drain(rig, private_broker)
    report = rig.ledger.report(
        3 * INBOX_LIMIT,
        note=f"x-max-length {INBOX_LIMIT}: {len(rejected)} sends raised InboxFullError",
    )
    write_result(report)
    assert report.lost == 0 and report.unexpected == 0 and report.duplicated == 0
    assert set(rig.ledger.deliveries) == set(rig.ledger.confirms)
    assert report.send_errors == {"InboxFullError": 2 * INBOX_LIMIT - limit}
    assert report.max_send_s <= PUBLISH_TIMEOUT_S + 1.0, report.summary()


# -- 11: disk alarm -------------------------------------------------------------------------


async def test_11_disk_alarm_send_raises_publish_timeout_then_resumes(
    make_rig: MakeRig, private_broker: PrivateBroker
) -> None:
    rig = await make_rig("11-disk-alarm")

    async def inject(rig: Rig) -> str:
        await asyncio.to_thread(private_broker.trigger_disk_alarm)
        rig.ledger.fault()
        try:
            await rig.ledger.wait_for(
                lambda: rig.ledger.send_errors["PublishTimeoutError"] >= SENDERS,
                PUBLISH_TIMEOUT_S + 10,
            )
        finally:
            await asyncio.to_thread(private_broker.clear_disk_alarm)
        return "disk alarm raised until every sender had a PublishTimeoutError"

    report = await run_fault_scenario(rig, private_broker, inject, rate=CLI_FAULT_RATE)
    verdict(rig, report)
    assert report.send_errors.get("PublishTimeoutError", 0) >= SENDERS, report.summary()


# -- 12: the inbox deleted by an operator while consumed ------------------------------


async def test_12_deleted_inbox_is_declared_again_and_consumed(
    make_rig: MakeRig, private_broker: PrivateBroker
) -> None:
    """The agent notices the broker cancelling its consumer, declares its inbox (and
    the bindings) again and goes on. Sending pauses around the deletion: a message
    published while the inbox does not exist reaches only the history stream (see
    docs/reliability.md), and what sat in the inbox is deleted with it."""
    rig = await make_rig("12-inbox-deleted")
    inbox = wire.inbox_name(rig.ns, SINK)
    with LogWatch("amqp_agents.agent") as watch:
        await run_load(rig, n=N // 3)
        await rig.ledger.wait_for(lambda: not rig.ledger.undelivered(), DRAIN_TIMEOUT_S)
        await asyncio.to_thread(private_broker.ctl, "delete_queue", inbox)
        cancelled_at = await watch.wait_for("cancelled the consumer", timeout=10)
        again_at = await watch.wait_for("consuming its inbox again", timeout=10)
        rig.ledger.fault(at=cancelled_at)
        rig.ledger.fault_over(at=again_at)
        canary = await send_canary(rig)
        await run_load(rig, first=N // 3)
    await drain(rig, private_broker)
    report = rig.ledger.report(
        N,
        canary=canary,
        recovery_of="consumer",
        recovery_ms=(again_at - cancelled_at) * 1000,
        note="inbox deleted (rabbitmqctl delete_queue) between two thirds of the load",
    )
    write_result(report)
    assert report.lost == 0 and report.unexpected == 0, report.summary()
    assert report.canary_ms is not None and report.canary_ms <= CANARY_DEADLINE_S * 1000


async def test_12b_passive_agent_stops_with_a_clear_error_when_its_inbox_is_deleted(
    make_rig: MakeRig, private_broker: PrivateBroker
) -> None:
    """A passive agent may not create its inbox: it stops, and start() raises."""
    rig = await make_rig("12b-inbox-deleted-passive", start=False)
    inbox = wire.inbox_name(rig.ns, SINK)
    passive = MessageQueue(
        private_broker.url, namespace=rig.ns, passive=True, connection_name="12b passive"
    )
    await passive.connect()
    try:
        agent = SinkAgent(SINK, passive, rig.ledger)
        running = asyncio.create_task(agent.start())
        await send_with_retry(rig.sender, rig.ledger, message_id(rig, 0))
        await rig.ledger.wait_delivered([message_id(rig, 0)], timeout=10)
        deleted_at = clock()
        await asyncio.to_thread(private_broker.ctl, "delete_queue", inbox)
        with pytest.raises(TopologyError, match=inbox):
            await asyncio.wait_for(running, 15)
        stopped_ms = (clock() - deleted_at) * 1000
        assert not agent.running and isinstance(agent.error, TopologyError)
    finally:
        await passive.close()
    report = rig.ledger.report(
        1, note=f"passive agent stopped with TopologyError {stopped_ms:.0f} ms after the delete"
    )
    write_result(report)
    assert report.lost == 0, report.summary()
