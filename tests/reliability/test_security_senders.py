"""Scenario 19 (issue 17): nobody makes an agent believe a forged sender, by default.

On a private RabbitMQ 3.10 node with docs/deploy.md's permissions run as written, an
agent user M attacks agent B (and A, a requester). Every attack is one that RabbitMQ
accepts; what protects B is the ``user_id`` RabbitMQ validated, checked by B's consumer
(amqp_agents/senders.py), and, for CC copies, the header check of admission:

* **x-sender forged**: M's own sender word in the routing key, ``x-sender: C``;
* **no user_id**: M leaves ``user_id`` out and claims to be A;
* **own exchange**: M declares an exchange named like its reply queue (the configure
  pattern matches exchanges too), binds it to ``{ns}`` and publishes ``task.2.C.B``
  there (topic permissions are checked only on the exchange published to);
* **dead-letter route**: M declares a reply-named queue that dead-letters into ``{ns}``
  with key ``task.2.C.B`` at once (TTL 0), and publishes into it through ``{ns}.replies``;
* **CC, recipient -**: ``task.2.M.-`` with ``CC: task.2.M.B`` (a routed key: only the
  header tells the copy);
* **reused request id**: A's pending request id, with A's reply queue as ``reply_to``.

Each runs against B in the default configuration (one RabbitMQ user per agent, named
after it; nothing configured) and from ``amqp-agents run`` (a subprocess) whose one
user serves two agents, listed in the YAML's ``broker.senders``. Each case asserts
that RabbitMQ let M's attempt through, that B's handler never ran it, and that B
dead-lettered it with the reason. The attacks are made once per configuration and
judged case by case, so one failure hides no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest
import pytest_asyncio
from aio_pika.abc import AbstractChannel, AbstractConnection
from private_broker import PrivateBroker
from recording_agent import HANDLED, RecordingAgent
from test_security import (
    WAIT_S,
    Deployment,
    Queues,
    _doc_line,
    deploy,
    deploy_blocks,
    run_doc_script,
)

from amqp_agents import Message, MessageType, TaskHandle, wire

pytestmark = pytest.mark.reliability

HERE = Path(__file__).parent
ROOT = HERE.parents[1]

ATTACKS = {
    "x-sender forged": "unauthenticated sender",
    "no user_id": "unauthenticated sender",
    "own exchange bound to ns": "unauthenticated sender",
    "dead-letter route into ns": "unauthenticated sender",
    "CC with recipient -": "misaddressed",
    "reused request id, A's reply_to": "reply_to not the sender's",
}
"""Each attack of M -> the start of the reason B dead-letters it with."""
REUSED = "reused request id, A's reply_to"
CONFIGURATIONS = ("default", "amqp-agents run")

Action = Callable[[AbstractChannel], Awaitable[object]]


@dataclass
class Handled:
    """What reached B's handler: (message id, sender), in order, and a way to wait."""

    seen: list[tuple[str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, message_id: str, sender: str) -> None:
        self.seen.append((message_id, sender))
        self.changed.set()

    async def wait_for(self, message_id: str) -> None:
        async with asyncio.timeout(WAIT_S):
            while not any(seen_id == message_id for seen_id, _ in self.seen):
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Cast:
    """One configuration's agents, M, and what came of M's attacks."""

    configuration: str
    namespace: str
    ids: dict[str, str]
    """"a", "b", "c", "m" (and "d", B's companion in the run) -> agent id."""
    outcomes: dict[str, BaseException | None] = field(default_factory=dict)
    """Attack -> what RabbitMQ raised at M (None: accepted)."""
    handled: Handled = field(default_factory=Handled)
    dead: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Attack -> the headers of its dead letter."""
    request_id: str = ""
    answer: Any = None
    """What A's request (whose id M reused) got back."""
    m: AbstractConnection | None = None
    """M's connection, open while the class's tests run."""


def attacks_of_m(ns: str, ids: dict[str, str], reply_a: str, request_id: str) -> dict[str, Action]:
    """Each attack, run on a fresh channel of M's connection."""
    a, b, c, m = ids["a"], ids["b"], ids["c"], ids["m"]

    def message(what: str, *, sender: str, user_id: str | None = m, **more: Any) -> Any:
        return aio_pika.Message(
            json.dumps(what).encode(),
            content_type=wire.CONTENT_TYPE,
            priority=2,  # as the sentinel's: B's inbox keeps them in order
            message_id=more.pop("message_id", what),
            type="task",
            user_id=user_id,
            headers={wire.H_SENDER: sender, **more.pop("headers", {})},
            **more,
        )

    async def to_ns(channel: AbstractChannel, key: str, msg: aio_pika.Message) -> None:
        traffic = await channel.get_exchange(wire.exchange_name(ns), ensure=False)
        await traffic.publish(msg, routing_key=key)

    def reply_named() -> str:
        return wire.reply_queue_name(ns, m, uuid.uuid4().hex)

    async def own_exchange(channel: AbstractChannel) -> None:
        mine = await channel.declare_exchange(reply_named(), "topic", auto_delete=True)
        traffic = await channel.get_exchange(wire.exchange_name(ns), ensure=False)
        await traffic.bind(mine, routing_key="#")  # {ns} gets what mine gets
        what = "own exchange bound to ns"
        await mine.publish(message(what, sender=c), routing_key=f"task.2.{c}.{b}")

    async def dead_letter_route(channel: AbstractChannel) -> None:
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": wire.exchange_name(ns),
            "x-dead-letter-routing-key": f"task.2.{c}.{b}",
            "x-message-ttl": 0,
        }
        queue = await channel.declare_queue(reply_named(), exclusive=True, arguments=arguments)
        replies = wire.reply_exchange_name(ns)
        await queue.bind(replies, routing_key=queue.name)
        exchange = await channel.get_exchange(replies, ensure=False)
        what = "dead-letter route into ns"
        await exchange.publish(message(what, sender=c), routing_key=queue.name)

    return {
        "x-sender forged": lambda ch: to_ns(
            ch, f"task.2.{m}.{b}", message("x-sender forged", sender=c)
        ),
        "no user_id": lambda ch: to_ns(
            ch, f"task.2.{m}.{b}", message("no user_id", sender=a, user_id=None)
        ),
        "own exchange bound to ns": own_exchange,
        "dead-letter route into ns": dead_letter_route,
        "CC with recipient -": lambda ch: to_ns(
            ch,
            f"task.2.{m}.-",
            message("CC with recipient -", sender=m, headers={"CC": [f"task.2.{m}.{b}"]}),
        ),
        REUSED: lambda ch: to_ns(
            ch,
            f"task.2.{m}.{b}",
            message(REUSED, sender=m, message_id=request_id, reply_to=reply_a),
        ),
    }


async def as_m(m: AbstractConnection, action: Action) -> BaseException | None:
    """Run ``action`` on a fresh channel of M; what it raised, if anything."""
    channel = await m.channel(publisher_confirms=True)
    try:
        await action(channel)
    except Exception as exc:  # judged by the tests
        return exc
    return None  # the channel stays open: M's exclusive queue and exchange live on it


async def dead_letters(
    channel: AbstractChannel, ns: str, wanted: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Consume ``{ns}.dead`` until each wanted message id is there (at most WAIT_S):
    attack -> headers of its dead letter. ``wanted`` maps message id -> attack; one
    that B handled instead never arrives, and its case fails on its own.
    """
    found: dict[str, dict[str, Any]] = {}
    dead = await channel.get_queue(wire.dead_queue_name(ns), ensure=False)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WAIT_S), dead.iterator() as deliveries:
            async for incoming in deliveries:
                await incoming.ack()
                if (attack := wanted.get(str(incoming.message_id))) is not None:
                    found[attack] = dict(incoming.headers or {})
                if len(found) == len(wanted):
                    break
    return found


async def deploy_shared_user(deployed: Deployment, user: str, agents: list[str]) -> str:
    """The doc's agent block for one user serving ``agents`` (AGENT an alternation)."""
    password = uuid.uuid4().hex
    blocks = deploy_blocks()
    script = (
        _doc_line(blocks["admin"], "NS_RE=")
        + f"AGENT='({'|'.join(agents)})' AGENT_USER={user} AGENT_PASSWORD={password}\n"
        + blocks["agent"]
    )
    deployed.users.append(user)
    await run_doc_script(script, deployed.env)
    return password


class Witness(RecordingAgent):
    """The run's agent class, in this process: what it handles goes to ``handled``."""

    handled: Handled

    def report(self, message: Message) -> None:
        self.handled.add(message.id, message.sender)


class RunProcess:
    """``amqp-agents run CONFIG`` as a subprocess; its ``handled`` lines feed ``handled``."""

    def __init__(self, process: asyncio.subprocess.Process, handled: Handled) -> None:
        self.process = process
        self.handled = handled
        self.lines: list[str] = []
        self.running = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while raw := await self.process.stdout.readline():
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if "agent(s) running" in line:
                self.running.set()
            if line.startswith(f"{HANDLED} "):
                _, message_id, sender, _ = line.split(" ")
                self.handled.add(message_id, sender)

    async def wait_running(self) -> None:
        try:
            await asyncio.wait_for(self.running.wait(), WAIT_S)
        except TimeoutError:
            raise AssertionError("\n".join(["run did not start:", *self.lines])) from None

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), WAIT_S)
        await self._reader


@pytest_asyncio.fixture(scope="class", loop_scope="class", params=CONFIGURATIONS)
async def cast(
    request: pytest.FixtureRequest,
    private_broker: PrivateBroker,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Cast]:
    """M's attacks on B in one configuration, made once; then B serves them all."""
    configuration: str = request.param
    suffix = uuid.uuid4().hex[:8]
    ns = f"snd-{suffix}"
    ids = {name: f"{name}-{suffix}" for name in ("a", "b", "c", "d", "m")}
    a, b, m = ids["a"], ids["b"], ids["m"]
    cast = Cast(configuration, ns, ids)
    async with contextlib.AsyncExitStack() as stack:
        queues = Queues(private_broker, ns, f"test scenario 19 {configuration}")
        stack.push_async_callback(queues.close)
        admin = await queues()  # the admin's part (topology apply), by guest
        for agent in ids.values():
            await admin.ensure_inbox(agent)
        bin_dir = tmp_path_factory.mktemp("bin")
        users = [a, m] if configuration == "amqp-agents run" else [a, b, m]
        deployed = await deploy(private_broker, ns, bin_dir, users)
        stack.push_async_callback(deployed.remove_users, private_broker)
        stack.push_async_callback(queues.close)  # before the users go (idempotent)
        shared = f"svc-{suffix}"
        senders: dict[str, list[str]] = {}
        if configuration == "amqp-agents run":
            password = await deploy_shared_user(deployed, shared, [b, ids["d"]])
            senders = {shared: [b, ids["d"]]}

        # A's pending request to B (M learnt its id and A's reply queue): sent after M's.
        queue_a = await queues(deployed.urls[a], passive=True, reply_owner=a, senders=senders)
        reply_a = (await queue_a.replies()).queue_name
        asked = Message(sender=a, recipient=b, type=MessageType.TASK, content="A's question")
        cast.request_id = asked.id

        m_connection = await aio_pika.connect(deployed.urls[m], timeout=10)
        stack.push_async_callback(m_connection.close)
        cast.m = m_connection
        for attack, action in attacks_of_m(ns, ids, reply_a, asked.id).items():
            cast.outcomes[attack] = await as_m(m_connection, action)
        handle: TaskHandle = await queue_a.request(asked, timeout_s=WAIT_S)
        sentinel = Message(sender=a, recipient=b, content="after M")
        await queue_a.send(sentinel)

        # Only now does B start: its inbox holds M's attacks, then A's request, then
        # the sentinel, in that order.
        if configuration == "default":
            queue_b = await queues(deployed.urls[b], passive=True, reply_owner=b)
            agent_b = Witness(b, queue_b, concurrency=1)
            agent_b.handled = cast.handled
            await agent_b.start_consuming()
            stack.push_async_callback(agent_b.stop)
        else:
            agents = [b, ids["d"]]
            run = await start_run(private_broker, bin_dir, ns, shared, password, senders, agents)
            stack.push_async_callback(run.stop)
            cast.handled = run.handled
            await run.wait_running()
        await cast.handled.wait_for(sentinel.id)
        cast.answer = await handle.result()
        foreign = await aio_pika.connect(private_broker.url, timeout=10)
        stack.push_async_callback(foreign.close)
        wanted = {attack: attack for attack in ATTACKS if cast.outcomes[attack] is None}
        if REUSED in wanted:
            wanted[asked.id] = wanted.pop(REUSED)
        cast.dead = await dead_letters(await foreign.channel(), ns, wanted)
        yield cast


async def start_run(
    broker: PrivateBroker,
    config_dir: Path,
    ns: str,
    user: str,
    password: str,
    senders: dict[str, list[str]],
    agents: list[str],
) -> RunProcess:
    """``amqp-agents run`` of ``agents`` on one connection as ``user``, passive."""
    config = {
        "broker": {
            "url": "${AMQP_URL}",
            "namespace": ns,
            "passive": True,
            "senders": senders,
        },
        "agents": [
            {"id": agent, "class": "recording_agent:RecordingAgent", "concurrency": 1}
            for agent in agents
        ],
    }
    path = config_dir / f"{ns}.yaml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    # The admin's `topology apply` (guest here), then the agents' passive run.
    cli = (sys.executable, "-m", "amqp_agents")
    apply = await asyncio.create_subprocess_exec(
        *cli,
        "topology",
        "apply",
        str(path),
        env=env | {"AMQP_URL": broker.url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(apply.communicate(), WAIT_S)
    assert apply.returncode == 0, output.decode()
    env["AMQP_URL"] = f"amqp://{user}:{password}@127.0.0.1:{broker.amqp_port}/"
    process = await asyncio.create_subprocess_exec(
        *cli,
        "run",
        str(path),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return RunProcess(process, Handled())


@pytest.mark.asyncio(loop_scope="class")
class TestForgedSenders:
    """Scenario 19: each attack, in each configuration (the class runs once per one)."""

    @pytest.mark.parametrize("attack", ATTACKS)
    async def test_rabbitmq_lets_m_do_it(self, cast: Cast, attack: str) -> None:
        assert cast.outcomes[attack] is None, repr(cast.outcomes[attack])

    @pytest.mark.parametrize("attack", ATTACKS)
    async def test_bs_handler_never_runs_it(self, cast: Cast, attack: str) -> None:
        if attack == REUSED:  # the id is A's: only A's request may reach the handler
            assert [s for i, s in cast.handled.seen if i == cast.request_id] == [cast.ids["a"]]
        else:
            assert attack not in [i for i, _ in cast.handled.seen], cast.handled.seen

    @pytest.mark.parametrize("attack", ATTACKS)
    async def test_b_dead_letters_it_with_the_reason(self, cast: Cast, attack: str) -> None:
        assert attack in cast.dead, f"not in {cast.namespace}.dead within {WAIT_S}s"
        headers = cast.dead[attack]
        assert headers[wire.H_DEAD_AGENT] == cast.ids["b"]
        reason = str(headers[wire.H_DEAD_REASON])
        assert reason.startswith(ATTACKS[attack]), reason

    async def test_b_believes_no_forged_sender(self, cast: Cast) -> None:
        assert {sender for _, sender in cast.handled.seen} == {cast.ids["a"]}

    async def test_m_may_dead_letter_only_where_it_may_write(self, cast: Cast) -> None:
        """docs/deploy.md: dead-letter arguments need write on the dead-letter
        exchange; so B's retry exchange (its way into B's inbox) stays out of reach."""
        assert cast.m is not None
        ns, m, b = cast.namespace, cast.ids["m"], cast.ids["b"]

        async def declare(channel: AbstractChannel) -> None:
            await channel.declare_queue(
                wire.reply_queue_name(ns, m, uuid.uuid4().hex),
                exclusive=True,
                arguments={"x-dead-letter-exchange": wire.retry_exchange_name(ns, b)},
            )

        refused = await as_m(cast.m, declare)
        assert isinstance(refused, aiormq.exceptions.ChannelAccessRefused), repr(refused)

    async def test_a_gets_bs_answer_to_its_own_question(self, cast: Cast) -> None:
        assert cast.answer == f"{cast.ids['b']} answers A's question"
