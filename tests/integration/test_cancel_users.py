"""Who may cancel: on a vhost of its own with one RabbitMQ user per party, a cancel
record published by a user who may not speak for the task's sender is ignored, and the
requester's own cancel works (cancellation.py, senders.py)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from amqp_agents import Message, MessagePassingAgent, MessageQueue, MessageType, TaskCancelledError
from amqp_agents.cancellation import CancelRecords, publish_cancel

pytestmark = pytest.mark.rabbitmq_only(
    reason="users, vhosts and validated user_ids are RabbitMQ's; rabbitmqctl makes them"
)

WAIT_S = 10
PARTIES = ("boss", "worker", "mallory")


@dataclass(frozen=True)
class Vhost:
    """A vhost of this test with one user per party: party -> (user name, AMQP URL)."""

    namespace: str
    users: dict[str, tuple[str, str]]


@pytest.fixture
def vhost(rabbitmqctl: str, amqp_url: str, namespace: str) -> Iterator[Vhost]:
    """Created with rabbitmqctl, deleted (vhost and users) after."""

    def ctl(*args: str) -> None:
        subprocess.run([rabbitmqctl, "-q", *args], check=True, capture_output=True, timeout=60)

    base = urlsplit(amqp_url)
    host = f"{base.hostname}:{base.port or 5672}"
    users: dict[str, tuple[str, str]] = {}
    try:
        ctl("add_vhost", namespace)
        for party in PARTIES:
            # User names are the agent ids they speak as (senders.py, rule a); users are
            # global to the broker, so they carry the test's unique namespace.
            user, password = f"{namespace}-{party}", secrets.token_hex(12)
            ctl("add_user", user, password)
            users[party] = (user, f"amqp://{user}:{password}@{host}/{quote(namespace, safe='')}")
            # Everyone may write to the cancels exchange: only the user_id check stops
            # mallory, which is what this test is about.
            ctl("set_permissions", "-p", namespace, user, ".*", ".*", ".*")
        yield Vhost(namespace, users)
    finally:
        subprocess.run([rabbitmqctl, "-q", "delete_vhost", namespace], capture_output=True)
        for user, _ in users.values():
            subprocess.run([rabbitmqctl, "-q", "delete_user", user], capture_output=True)


@pytest.fixture
async def queues(vhost: Vhost) -> AsyncIterator[dict[str, MessageQueue]]:
    """A connected MessageQueue per party, each logged in as its own user."""
    made: dict[str, MessageQueue] = {}
    try:
        for party, (_, url) in vhost.users.items():
            made[party] = MessageQueue(url, namespace=vhost.namespace)
            await made[party].connect()
        yield made
    finally:
        for queue in made.values():
            await queue.close()


async def test_only_the_requester_can_cancel_its_task(
    vhost: Vhost, queues: dict[str, MessageQueue]
) -> None:
    boss, worker, mallory = (vhost.users[p][0] for p in PARTIES)
    gate, started = asyncio.Event(), asyncio.Event()
    handled: list[Any] = []
    agent = MessagePassingAgent(worker, queues["worker"], concurrency=1)

    @agent.on(MessageType.TASK)
    async def work(message: Message) -> Any:
        handled.append(message.content)
        started.set()
        await gate.wait()
        return f"done {message.content}"

    await agent.start_consuming()
    try:

        async def send(content: str) -> Any:
            task = Message(sender=boss, recipient=worker, type=MessageType.TASK, content=content)
            return await queues["boss"].request(task, timeout_s=30)

        async def forge(task_id: str) -> None:
            # What mallory can do: publish a well-formed record claiming the boss's task.
            await publish_cancel(
                queues["mallory"].publisher,
                task_id,
                sender=boss,
                recipient=worker,
                deadline=running.deadline or running.message.timestamp,
            )

        records = CancelRecords.of(queues["worker"])
        running = await send("running")
        async with asyncio.timeout(WAIT_S):
            await started.wait()
        queued = await send("queued")  # behind the running one: concurrency 1

        await forge(running.message.id)
        async with asyncio.timeout(WAIT_S):
            await records.received(running.message.id)  # the agent read it...

        assert await queued.cancel() is True  # the requester's own cancel
        await forge(queued.message.id)  # read after it: must not undo it
        await forge("sentinel")
        async with asyncio.timeout(WAIT_S):
            await records.received("sentinel")  # every record above was read

        gate.set()
        after = await send("after")
        async with asyncio.timeout(WAIT_S):
            assert await running.result() == "done running"  # ...and ignored mallory's
            assert await after.result() == "done after"
            with pytest.raises(TaskCancelledError):
                await queued.result()
        assert handled == ["running", "after"]  # the queued task was skipped on arrival
        assert {c.user_id for c in records.cancels[queued.message.id]} == {boss, mallory}
    finally:
        await agent.stop()
