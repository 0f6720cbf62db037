"""The wire contract proven in another language: tests/foreign/client.mjs against real agents.

The Node.js client is written from docs/wire-format.md and docs/wire-vectors/ alone
(its only dependency is amqplib). This test starts the demo's researcher and writer in
a namespace of its own and runs the client against them; every check the client makes
is listed in its output, and one failed check fails this test with its details. Node
and the client's node_modules are part of the test environment (``.ci/run`` installs
them with ``npm ci``): without them the test fails, it never skips.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from amqp_agents import MessageQueue
from amqp_agents.demo import ResearchAgent, WriterAgent

HERE = Path(__file__).parent
CLIENT_ID = "node-client"
"""The agent id the client uses for itself (its reply queue and its inbox)."""


def node() -> str:
    """The node executable, after checking the client's dependencies are installed."""
    path = shutil.which("node")
    if path is None:
        pytest.fail(
            "Node.js is not installed: the foreign-client test needs `node` (v18 or later)"
            " on PATH, and `npm ci --prefix tests/foreign` run once.",
            pytrace=False,
        )
    if not (HERE / "node_modules" / "amqplib").is_dir():
        pytest.fail(
            "tests/foreign/node_modules is missing: run `npm ci --prefix tests/foreign`.",
            pytrace=False,
        )
    return path


@pytest.fixture
async def agents(queue: MessageQueue) -> AsyncIterator[None]:
    """The demo's researcher and writer, consuming in the test's namespace."""
    started = [ResearchAgent("researcher", queue), WriterAgent("writer", queue)]
    for agent in started:
        await agent.start_consuming()
    yield
    for agent in started:
        await agent.stop()


async def test_a_node_client_written_from_the_doc_passes_every_check(
    agents: None,
    amqp_url: str,
    namespace: str,
    raw_channel: aio_pika.abc.AbstractChannel,
) -> None:
    executable = node()
    env = {**os.environ, "AMQP_URL": amqp_url, "AMQP_AGENTS_NAMESPACE": namespace}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        executable,
        str(HERE / "client.mjs"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        # The inbox the client declared for itself; the rest is the namespace's.
        await raw_channel.queue_delete(f"{namespace}.inbox.{CLIENT_ID}")
    lines = stdout.decode().strip().splitlines()
    assert lines, f"the client printed nothing; stderr:\n{stderr.decode()}"
    report = json.loads(lines[-1])
    wall_s = time.monotonic() - started
    print(f"node client: {report['checks']} checks, {report['timings_ms']} ms, {wall_s:.1f} s wall")
    assert report["failure"] is None, report["failure"]
    assert report["failed"] == [], json.dumps(report["failed"], indent=2)
    assert report["checks"] > 100, report
    assert (report["ok"], process.returncode) == (True, 0), stderr.decode()
