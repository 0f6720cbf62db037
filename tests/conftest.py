"""Finding a real RabbitMQ for the tests, and giving each test its own namespace.

Order: ``$AMQP_URL`` if set; else the local broker on 127.0.0.1:5672 if it answers;
else a RabbitMQ container through testcontainers if Docker works; else the session
fails loudly. There is no skip: a test run without a broker is a failed run.

tests/integration/conftest.py runs its tests on this broker and on ``memory://``
(the in-process broker); :func:`raw_connect` opens a plain connection to either.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import aio_pika
import pytest
from hypothesis import settings

from amqp_agents import MessageQueue
from amqp_agents.memory.transport import PlainMemoryConnection
from amqp_agents.topology import delete_namespace

pytest_plugins = ["amqp_agents.testing"]  # memory_queue, virtual_clock (tests/memory)

# Hypothesis' per-example deadline (200 ms) measures the machine, not the code: on a
# loaded 2-core CI runner a pure decode example can take longer and fail as flaky.
settings.register_profile("ci", deadline=None)
settings.load_profile("ci")

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"
SESSION = uuid.uuid4().hex[:6]
"""Every namespace a test uses starts with ``t-{SESSION}-``: leaks are attributable."""


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


async def raw_connect(url: str) -> aio_pika.abc.AbstractConnection:
    """A plain aio-pika connection to ``url``: a RabbitMQ, or ``memory://NAME``."""
    if url.startswith("memory://"):
        plain = PlainMemoryConnection(url)
        await plain.connect()
        return plain
    return await aio_pika.connect(url)


RawConnect = Callable[[str], Awaitable[aio_pika.abc.AbstractConnection]]


@pytest.fixture
def connect_raw() -> RawConnect:
    """:func:`raw_connect`, for tests and fixtures elsewhere."""
    return raw_connect


@pytest.fixture(scope="session")
def amqp_url(rabbitmq_url: str) -> str:
    """The broker of tests that run on RabbitMQ only (integration tests override it)."""
    return rabbitmq_url


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """The URL of a real broker; never skips."""
    yield from find_rabbitmq()


def find_rabbitmq() -> Iterator[str]:
    """``$AMQP_URL``, else the local broker, else a container (stopped after); else fail."""
    if url := os.environ.get("AMQP_URL"):
        yield url
        return
    if _port_open("127.0.0.1", 5672):
        yield LOCAL_URL
        return
    try:
        container = rabbitmq_container_class()(RABBITMQ_IMAGE)
        container.start()
    except Exception as exc:  # no Docker engine, no image, ...
        pytest.fail(
            "no RabbitMQ for the tests: AMQP_URL is unset, nothing answers on "
            f"127.0.0.1:5672, and testcontainers could not start one ({exc!r}). "
            "Start one with `docker compose up -d rabbitmq` or `rabbitmq-server -detached`.",
            pytrace=False,
        )
    try:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        yield f"amqp://guest:guest@{host}:{port}/"
    finally:
        container.stop()


RABBITMQ_IMAGE = "rabbitmq:3.13-management"


def rabbitmq_container_class() -> Any:
    """testcontainers' RabbitMQ container class, from its current module."""
    try:
        from testcontainers.community.rabbitmq import RabbitMqContainer
    except ImportError:  # testcontainers before 4.14
        from testcontainers.rabbitmq import RabbitMqContainer
    return RabbitMqContainer


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace unique to this test."""
    return f"t-{SESSION}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def make_queue(
    amqp_url: str, namespace: str, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Awaitable[MessageQueue]]]:
    """Factory of connected MessageQueues in the test's namespace; deletes what they made."""
    made: list[MessageQueue] = []

    async def factory(**kwargs: Any) -> MessageQueue:
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("connection_name", f"test {request.node.nodeid}")
        queue = MessageQueue(amqp_url, **kwargs)
        await queue.connect()
        made.append(queue)
        return queue

    yield factory
    declared: set[str] = set()
    for queue in made:
        declared |= queue.declared_queues
        await queue.close()
    await cleanup_namespace(amqp_url, namespace, sorted(declared))


@pytest.fixture
async def queue(make_queue: Callable[..., Awaitable[MessageQueue]]) -> MessageQueue:
    """A connected MessageQueue in the test's namespace."""
    return await make_queue()


@pytest.fixture
async def raw_channel(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel (confirms on), for playing a foreign client."""
    connection = await raw_connect(amqp_url)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


async def cleanup_namespace(url: str, namespace: str, queues: Sequence[str] = ()) -> None:
    """Delete the exchanges and fixed queues of ``namespace``, and ``queues``."""
    connection = await raw_connect(url)
    try:
        channel = await connection.channel()
        await asyncio.wait_for(delete_namespace(channel, namespace, queues), 30)
    finally:
        await connection.close()


def _leftovers() -> list[str]:
    """Queues and exchanges of this session still on the local broker (needs rabbitmqctl)."""
    if os.environ.get("AMQP_URL") or shutil.which("rabbitmqctl") is None:
        return []
    names: list[str] = []
    for what in ("list_queues", "list_exchanges"):
        done = subprocess.run(
            ["rabbitmqctl", "-q", what, "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        names += [n for n in done.stdout.split() if n.startswith(f"t-{SESSION}-")]
    return names


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test left a queue or exchange behind on the shared broker."""
    if exitstatus != 0 or getattr(session.config, "workerinput", None) is not None:
        return
    if leftovers := _leftovers():
        print(f"\nLEAK: tests left these on the broker: {', '.join(sorted(leftovers))}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
