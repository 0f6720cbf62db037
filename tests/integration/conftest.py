"""Two brokers for every behaviour test, and the ``amqp-agents`` CLI run as a user does.

**One suite, two brokers.** Every test here that uses a broker (``amqp_url``, and
through it ``queue``, ``make_queue``, ``raw_channel``...) runs twice: ``[rabbitmq]`` on
the real broker, ``[memory]`` on ``memory://`` (an in-process broker of its own per
test). A test that can only hold on RabbitMQ says why with
``@pytest.mark.rabbitmq_only(reason=...)`` and runs there alone. A difference between
the two is a defect of the memory broker, fixed there, never in the test.

The CLI runs as a user runs it (a subprocess), so its tests are RabbitMQ-only: a
subprocess cannot reach the test's in-process broker. A test using ``spawn`` (so also
``run_cli``) or ``rabbitmqctl`` is RabbitMQ-only without a mark; the part of the suite
that needs no broker at all is ``-m "not rabbitmq"``.

Synchronisation is on the processes' output, never on time: :meth:`CliProcess.expect`
reads lines until one contains the text, with a timeout that fails the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from amqp_agents import MessageQueue, memory
from amqp_agents.config import load_config
from amqp_agents.layout import layout_of
from amqp_agents.memory.transport import PlainMemoryConnection
from amqp_agents.topology import delete_namespace

ROOT = Path(__file__).parents[2]
TESTS = Path(__file__).parents[1]
BROKERS = ("rabbitmq", "memory")


RABBITMQ_ONLY_FIXTURES = {
    "spawn": "a CLI subprocess cannot reach the test's in-process broker",
    "rabbitmqctl": "the broker's own command line",
}
"""Fixtures that make a test RabbitMQ-only by themselves (a test needs no mark)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each broker test on both brokers, unless it is RabbitMQ-only: marked so, or
    using a fixture of :data:`RABBITMQ_ONLY_FIXTURES`."""
    if "broker" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("rabbitmq_only")
    if marker is not None and not marker.kwargs.get("reason"):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: rabbitmq_only needs a reason")
    implied = any(name in metafunc.fixturenames for name in RABBITMQ_ONLY_FIXTURES)
    brokers = ["rabbitmq"] if marker is not None or implied else list(BROKERS)
    params = [
        pytest.param(b, marks=pytest.mark.rabbitmq) if b == "rabbitmq" else b for b in brokers
    ]
    metafunc.parametrize("broker", params, indirect=True)


@pytest.fixture(autouse=True)
def plain_clients_reach_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """``aio_pika.connect(url)`` in a test (a foreign client) reaches ``memory://`` too."""
    original = aio_pika.connect

    async def connect(url: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(url, str) and url.startswith("memory://"):
            plain = PlainMemoryConnection(url)
            await plain.connect()
            return plain
        return await original(url, *args, **kwargs)

    monkeypatch.setattr(aio_pika, "connect", connect)


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """Which broker this run of the test uses: ``rabbitmq`` or ``memory``."""
    return str(request.param)


@pytest.fixture
def amqp_url(broker: str, namespace: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's broker: the real one, or an in-process one of its own."""
    if broker == "rabbitmq":
        yield str(request.getfixturevalue("rabbitmq_url"))
        return
    yield f"memory://{namespace}"
    memory.forget(namespace)


class CliProcess:
    """A running ``amqp-agents`` command; stdout and stderr arrive as one stream."""

    def __init__(self, process: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self.process = process
        self.args = args
        self.lines: list[str] = []

    async def expect(self, text: str, timeout_s: float = 30) -> str:
        """Read output until a line contains ``text``; return that line."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    raw = await self.process.stdout.readline()
                    if not raw:
                        raise AssertionError(f"exited before {text!r}:\n{self.output}")
                    line = raw.decode().rstrip("\n")
                    self.lines.append(line)
                    if text in line:
                        return line
        except TimeoutError:
            raise AssertionError(f"no {text!r} within {timeout_s}s:\n{self.output}") from None

    async def finish(self, timeout_s: float = 30) -> int:
        """Read the rest of the output and wait for the exit status."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            rest = await self.process.stdout.read()
            self.lines += rest.decode().splitlines()
            return await self.process.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


Spawn = Callable[..., Awaitable[CliProcess]]


@pytest.fixture
def rabbitmqctl() -> str:
    """The broker's own command line: users, vhosts, and what AMQP cannot list (bindings).

    Only for the local broker: with ``$AMQP_URL`` set it may be another one.
    """
    path = shutil.which("rabbitmqctl")
    if path is None or os.environ.get("AMQP_URL"):
        pytest.skip("needs rabbitmqctl for the broker under test")
    return path


@pytest.fixture
def cli_env(amqp_url: str, namespace: str) -> dict[str, str]:
    """The environment of CLI processes: the test's broker and namespace.

    ``tests`` is importable, so a configuration can name test agent classes.
    """
    return {
        "AMQP_URL": amqp_url,
        "AMQP_NAMESPACE": namespace,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(TESTS),
    }


@pytest.fixture
async def spawn(
    cli_env: dict[str, str],
    config_files: list[Path],
    make_queue: Callable[..., Awaitable[MessageQueue]],
) -> AsyncIterator[Spawn]:
    """Factory of running CLI processes; any still running at teardown is killed.

    Before ``config_files`` and ``make_queue`` delete the namespace (they are set up
    first, so torn down after): a live ``run`` would declare an inbox again as soon as
    it is deleted, and the test would leak it onto the broker.
    """
    started: list[CliProcess] = []

    async def factory(*args: str, env: dict[str, str] | None = None) -> CliProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "amqp_agents",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**cli_env, **(env or {})},
            cwd=ROOT,
        )
        started.append(CliProcess(process, args))
        return started[-1]

    yield factory
    for cli in started:
        if cli.process.returncode is None:
            cli.process.kill()
            await cli.process.wait()


Run = Callable[..., Awaitable[tuple[int, str]]]


@pytest.fixture
def run_cli(spawn: Spawn) -> Run:
    """Run a CLI command to its end: (exit status, output)."""

    async def run(
        *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
    ) -> tuple[int, str]:
        cli = await spawn(*args, env=env)
        status = await cli.finish(timeout_s=timeout_s)
        return status, cli.output

    return run


EXAMPLE = ROOT / "config" / "agents.example.yaml"


@pytest.fixture
async def config_files(
    amqp_url: str, namespace: str, connect_raw: Callable[[str], Awaitable[Any]]
) -> AsyncIterator[list[Path]]:
    """Configuration files a test uses; every queue of their layouts is deleted after.

    A test may so create the whole topology of a file (`topology apply`, `run`).
    """
    used: list[Path] = []
    yield used
    queues: set[str] = set()
    env = {"AMQP_URL": amqp_url, "AMQP_NAMESPACE": namespace}
    for path in used:
        config = load_config(path, env=env)
        assert config.broker.namespace == namespace, "tests stay in their namespace"
        queues |= {queue.name for queue in layout_of(config).queues}
    connection = await connect_raw(amqp_url)
    try:
        channel = await connection.channel()
        await asyncio.wait_for(delete_namespace(channel, namespace, sorted(queues)), 30)
    finally:
        await connection.close()


@pytest.fixture
def config_file(tmp_path: Path, config_files: list[Path]) -> Callable[[str], Path]:
    """Factory of configuration files (YAML text), cleaned up as ``config_files``."""

    def write(text: str) -> Path:
        path = tmp_path / f"agents-{len(config_files)}.yaml"
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        config_files.append(path)
        return path

    return write


@pytest.fixture
def example_config(config_files: list[Path]) -> Path:
    """config/agents.example.yaml, its namespace (from the env) cleaned up after."""
    config_files.append(EXAMPLE)
    return EXAMPLE
