"""docs/deploy.md's permissions, run as written against the real broker.

A vhost and users of the test's own (deleted after): the admin applies the topology,
then agent users run, serve and send within their permissions, and nothing more.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from amqp_agents import Message, MessagePassingAgent, MessageQueue, MessageType, RetryPolicy, wire

from .conftest import ROOT, Run, Spawn

pytestmark = pytest.mark.rabbitmq_only(
    reason="RabbitMQ users, permissions and vhosts: memory:// has none"
)

AGENTS = ("researcher", "writer")
CONFIG = """
broker:
  url: "${{AMQP_URL}}"
  namespace: "${{AMQP_NAMESPACE}}"
  passive: true
  senders: {senders}
agents:
  - {{id: researcher, class: "amqp_agents.demo:ResearchAgent"}}
  - {{id: writer, class: "amqp_agents.demo:WriterAgent"}}
routes:
  - {{pattern: "type:notification", destinations: [writer]}}
"""


def users_of(namespace: str) -> dict[str, str]:
    """Role ("admin" or an agent id) -> its RabbitMQ user: node-wide, so made unique."""
    return {role: f"{namespace}-{role}" for role in ("admin", *AGENTS)}


def senders_of(namespace: str) -> dict[str, list[str]]:
    """The ``senders`` map: each agent's user (not named as the agent) speaks for it."""
    users = users_of(namespace)
    return {users[agent]: [agent] for agent in AGENTS}


def doc_blocks() -> dict[str, str]:
    """The shell blocks of docs/deploy.md marked ``<!-- deploy-test: NAME -->``."""
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"<!-- deploy-test: (\w+) -->\n```bash\n(.*?)```", text, re.S))
    assert set(blocks) == {"admin", "agent", "foreign_replies"}
    return blocks


@dataclass(frozen=True)
class Deployment:
    """A vhost with the doc's admin and one user per agent (the user name differs)."""

    namespace: str
    urls: dict[str, str]
    """``"admin"`` and each agent id -> its AMQP URL (vhost in the path)."""


@pytest.fixture
def deployment(rabbitmqctl: str, amqp_url: str, namespace: str) -> Iterator[Deployment]:
    vhost = namespace  # unique to the test; deleting it deletes all it holds
    base = urlsplit(amqp_url)
    users = users_of(namespace)
    passwords = {role: secrets.token_hex(12) for role in users}
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "VHOST": vhost, "NS": namespace}
    env |= {"ADMIN_USER": users["admin"], "ADMIN_PASSWORD": passwords["admin"]}
    blocks = doc_blocks()
    script = blocks["admin"] + "".join(
        f"AGENT={agent} AGENT_USER={users[agent]} AGENT_PASSWORD={passwords[agent]}\n"
        + blocks["agent"]
        for agent in AGENTS
    )

    def ctl(*args: str) -> None:
        subprocess.run([rabbitmqctl, "-q", *args], check=True, capture_output=True, timeout=60)

    try:
        ctl("add_vhost", vhost)  # inside: one that timed out may still appear later
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        urls = {
            role: f"amqp://{users[role]}:{passwords[role]}@{base.hostname}:{base.port or 5672}"
            f"/{quote(vhost, safe='')}"
            for role in users
        }
        yield Deployment(namespace, urls)
    finally:
        ctl("delete_vhost", vhost)
        for user in users.values():
            subprocess.run([rabbitmqctl, "-q", "delete_user", user], capture_output=True)


@pytest.fixture
def config(tmp_path: Path, namespace: str) -> Path:
    path = tmp_path / "agents.yaml"
    path.write_text(CONFIG.format(senders=json.dumps(senders_of(namespace))), encoding="utf-8")
    return path


async def test_agent_users_run_serve_and_send_in_passive_mode(
    deployment: Deployment, config: Path, spawn: Spawn, run_cli: Run
) -> None:
    ns, urls = deployment.namespace, deployment.urls
    as_researcher = {"AMQP_URL": urls["researcher"]}

    status, output = await run_cli("run", str(config), "--agent", "researcher", env=as_researcher)
    assert status == 1
    assert "passive mode" in output and "`amqp-agents topology apply CONFIG`" in output

    status, output = await run_cli(
        "topology", "apply", str(config), env={"AMQP_URL": urls["admin"]}
    )
    assert status == 0, output

    run = await spawn("run", str(config), "--agent", "researcher", env=as_researcher)
    await run.expect("1 agent(s) running")
    send = await spawn(
        *("send", "--namespace", ns, "--from", "writer", "--to", "researcher"),
        *("deploy notes", "--wait"),
        *(f"--senders={user}={','.join(ids)}" for user, ids in senders_of(ns).items()),
        env={"AMQP_URL": urls["writer"]},
    )
    assert await send.finish() == 0, send.output
    assert send.lines[-1] == '"Research completed on: deploy notes"'
    run.process.send_signal(signal.SIGTERM)
    assert await run.finish() == 0, run.output

    # The researcher sends to the writer: addressed, and along the route.
    async with MessageQueue(
        urls["researcher"],
        namespace=ns,
        passive=True,
        reply_owner="researcher",
        senders=senders_of(ns),
    ) as researcher:
        await researcher.send(Message(sender="researcher", recipient="writer", content=1))
        await researcher.send(
            Message(sender="researcher", type=MessageType.NOTIFICATION, content=2)
        )
    async with MessageQueue(
        urls["admin"], namespace=ns, passive=True, senders=senders_of(ns)
    ) as admin:
        received = await admin.receive_all("writer")
    assert sorted(m.content for m in received) == [1, 2]


@pytest.fixture
async def researcher_channel(
    deployment: Deployment, config: Path, run_cli: Run
) -> AsyncIterator[Callable[[], Awaitable[AbstractChannel]]]:
    """Channels of a plain AMQP connection as the researcher user, topology applied."""
    status, output = await run_cli(
        "topology", "apply", str(config), env={"AMQP_URL": deployment.urls["admin"]}
    )
    assert status == 0, output
    connection = await aio_pika.connect(deployment.urls["researcher"])
    try:
        yield lambda: connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


async def test_agent_user_cannot_step_outside_its_permissions(
    deployment: Deployment, researcher_channel: Callable[[], Awaitable[AbstractChannel]]
) -> None:
    ns = deployment.namespace

    async def publish(routing_key: str) -> None:
        exchange = await (await researcher_channel()).get_exchange(ns, ensure=False)
        await exchange.publish(
            aio_pika.Message(b"{}", content_type="application/json"), routing_key
        )

    async def get(queue_name: str) -> None:
        queue = await (await researcher_channel()).get_queue(queue_name, ensure=False)
        await queue.get(fail=False)

    async def declare(queue_name: str) -> None:
        await (await researcher_channel()).declare_queue(queue_name, exclusive=True)

    async def bind_own_inbox() -> None:
        queue = await (await researcher_channel()).get_queue(
            wire.inbox_name(ns, "researcher"), ensure=False
        )
        await queue.bind(ns, routing_key="#")

    async def publish_to(exchange_name: str, routing_key: str) -> None:
        channel = await researcher_channel()
        exchange = (
            channel.default_exchange
            if exchange_name == ""
            else await channel.get_exchange(exchange_name, ensure=False)
        )
        await exchange.publish(
            aio_pika.Message(b"{}", content_type="application/json"), routing_key
        )

    async def bind_reply_queue(key: str | None = None) -> None:
        """Declare a reply queue of its own and bind it to the replies exchange under
        ``key`` (default: its own name, as the library does)."""
        channel = await researcher_channel()
        queue = await channel.declare_queue(
            wire.reply_queue_name(ns, "researcher", secrets.token_hex(16)), exclusive=True
        )
        await queue.bind(wire.reply_exchange_name(ns), routing_key=key or queue.name)

    async def bind_replies_into_traffic() -> None:
        traffic = await (await researcher_channel()).get_exchange(ns, ensure=False)
        await traffic.bind(wire.reply_exchange_name(ns), routing_key="*.*.*.writer")

    writers_reply_queue = wire.reply_queue_name(ns, "writer", secrets.token_hex(16))
    own_retry_queue = wire.retry_queue_name(ns, "researcher", 0.2)
    writers_retry_queue = wire.retry_queue_name(ns, "writer", 0.2)

    await publish("notification.2.researcher.writer")  # its own id: allowed
    await get(wire.inbox_name(ns, "researcher"))
    await bind_reply_queue()
    await publish_to(wire.reply_exchange_name(ns), writers_reply_queue)  # an answer
    await publish_to(wire.retry_exchange_name(ns, "researcher"), own_retry_queue)

    refused: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("a forged sender word", lambda: publish("notification.2.writer.researcher")),
        ("no sender word", lambda: publish("task.2.-.writer")),
        ("another agent's inbox", lambda: get(wire.inbox_name(ns, "writer"))),
        ("the history", lambda: get(wire.history_name(ns))),
        ("a queue of its own", lambda: declare(f"{ns}.spy")),
        ("another agent's reply queue", lambda: declare(writers_reply_queue)),
        ("widening what it receives", bind_own_inbox),
        # The default exchange reaches any queue by name: not granted.
        (
            "the default exchange into another agent's inbox",
            lambda: publish_to("", wire.inbox_name(ns, "writer")),
        ),
        (
            "the default exchange into another agent's retry queue",
            lambda: publish_to("", writers_retry_queue),
        ),
        (
            "another agent's retry exchange",
            lambda: publish_to(wire.retry_exchange_name(ns, "writer"), writers_retry_queue),
        ),
        (
            "the replies exchange with another key than a reply queue's",
            lambda: publish_to(wire.reply_exchange_name(ns), wire.history_name(ns)),
        ),
        # Eavesdropping on answers: its reply queue bound under another name.
        ("another agent's answers", lambda: bind_reply_queue(writers_reply_queue)),
        ("every answer", lambda: bind_reply_queue("#")),
        ("answers routed into the traffic exchange", bind_replies_into_traffic),
    ]
    for what, attempt in refused:
        with pytest.raises(aio_pika.exceptions.ChannelClosed, match="ACCESS_REFUSED"):
            await attempt()
            pytest.fail(f"allowed: {what}")


async def test_agent_user_retries_and_answers_without_the_default_exchange(
    deployment: Deployment, config: Path, run_cli: Run
) -> None:
    """Retries through the agent's own retry exchange, answers through {ns}.replies:
    to another agent user and to a foreign client's reply queue bound there."""
    ns, urls = deployment.namespace, deployment.urls
    status, output = await run_cli(
        "topology", "apply", str(config), env={"AMQP_URL": urls["admin"]}
    )
    assert status == 0, output
    senders = senders_of(ns)
    researcher_queue = MessageQueue(
        urls["researcher"], namespace=ns, passive=True, reply_owner="researcher", senders=senders
    )
    writer_queue = MessageQueue(
        urls["writer"], namespace=ns, passive=True, reply_owner="writer", senders=senders
    )
    failed: set[str] = set()

    async def fail_once(message: Message) -> list[Any]:
        if message.id not in failed:
            failed.add(message.id)
            raise RuntimeError("first try fails")
        return ["done", message.content]

    async with researcher_queue, writer_queue:
        researcher = MessagePassingAgent(
            "researcher", researcher_queue, retry=RetryPolicy(max_attempts=2, delays_s=(0.2,))
        )
        researcher.on(MessageType.TASK)(fail_once)
        await researcher.start_consuming()
        try:
            writer = MessagePassingAgent("writer", writer_queue)
            result = await writer.send_task("researcher", "x", timeout=20)
            assert result == ["done", {"description": "x", "context": {}}]
            assert len(failed) == 1, "answered after one retry"

            # A foreign client (here the admin user) with its own reply queue, bound to
            # {ns}.replies under its name as docs/deploy.md describes, sending as itself:
            # its user_id, and its user name as sender and as the reply queue's owner.
            admin = users_of(ns)["admin"]
            connection = await aio_pika.connect(urls["admin"])
            try:
                channel = await connection.channel(publisher_confirms=True)
                reply_queue = await channel.declare_queue(
                    f"{ns}.reply.{admin}.{secrets.token_hex(4)}", exclusive=True
                )
                await reply_queue.bind(wire.reply_exchange_name(ns), reply_queue.name)
                answered: asyncio.Future[AbstractIncomingMessage] = (
                    asyncio.get_running_loop().create_future()
                )

                async def on_reply(message: AbstractIncomingMessage) -> None:
                    answered.set_result(message)

                await reply_queue.consume(on_reply, no_ack=True)
                traffic = await channel.get_exchange(ns, ensure=False)
                await traffic.publish(
                    aio_pika.Message(
                        b'"from legacy"',
                        content_type=wire.CONTENT_TYPE,
                        type="task",
                        message_id="legacy-1",
                        reply_to=reply_queue.name,
                        user_id=admin,
                        headers={wire.H_SENDER: admin},
                    ),
                    f"task.2.{admin}.researcher",
                )
                answer = await asyncio.wait_for(answered, 20)
                assert answer.correlation_id == "legacy-1"
                assert answer.type == "result"
                assert json.loads(answer.body) == ["done", "from legacy"]
                assert len(failed) == 2, "the foreign task was retried too"
            finally:
                await connection.close()
        finally:
            await researcher.stop()
