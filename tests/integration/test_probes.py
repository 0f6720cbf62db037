"""`amqp-agents run --metrics-port`: /metrics, /healthz and /readyz over HTTP from a running
process (issue 14), and its JSON log lines.

The process logs the port it bound (``--metrics-port 0``). Counters move after a reply
is on its way, so a scrape that must see them is repeated until it does (within a
timeout that fails the test): the probe is the process's state, there is no event
to wait for from outside.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import aio_pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from amqp_agents import MessagePassingAgent, MessageQueue, RemoteError, wire

from .conftest import CliProcess, Run, Spawn

WORKER = """
broker: {{url: "${{AMQP_URL}}", namespace: "${{AMQP_NAMESPACE}}", passive: {passive}}}
agents:
  - {{id: worker, class: "integration.probe_agents:MoodyAgent", retry: {{max_attempts: 1}}}}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from the probes: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def scrape(port: int) -> Samples:
    status, body = await get(port, "/metrics")
    assert status == 200, body
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15) -> None:
    """Ask ``check`` until it holds; fail after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)  # the pace of a poll, not a synchronisation


async def start(
    spawn: Spawn, config: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[CliProcess, int]:
    """``run CONFIG --metrics-port 0``: the process and the port it serves probes on."""
    run = await spawn(
        "run", str(config), "--metrics-port", "0", "--metrics-host", "127.0.0.1", *args, env=env
    )
    line = await run.expect("probes on http://")
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match, line
    return run, int(match.group(1))


async def stopped(run: CliProcess) -> None:
    """SIGTERM the process and wait for its clean exit (before the namespace's cleanup:
    a running agent would declare its deleted inbox again)."""
    run.process.send_signal(signal.SIGTERM)
    assert await run.finish() == 0, run.output


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


async def test_metrics_move_by_the_tasks_handled(
    config_file: Callable[[str], Path], queue: MessageQueue, spawn: Spawn
) -> None:
    run, port = await start(spawn, config_file(WORKER.format(passive="false")))
    before = await scrape(port)
    task, result, error = (
        labels(agent="worker", type="task"),
        labels(agent="worker", type="result"),
        labels(agent="worker", type="error"),
    )
    expected = {
        ("amqp_agents_messages_handled_total", task): 3,
        ("amqp_agents_messages_failed_total", task): 1,
        ("amqp_agents_messages_dead_lettered_total", task): 1,
        ("amqp_agents_messages_retried_total", task): 0,
        ("amqp_agents_messages_sent_total", result): 3,
        ("amqp_agents_messages_sent_total", error): 1,
        ("amqp_agents_handler_duration_seconds_count", task): 4,
        ("amqp_agents_handler_duration_seconds_bucket", labels(le="+Inf", **dict(task))): 4,
        # three results, one error reply, one dead letter
        ("amqp_agents_publish_confirm_seconds_count", labels()): 5,
    }

    client = MessagePassingAgent("client", queue)
    for i in range(3):
        assert await client.send_task("worker", f"job {i}", timeout=30) == f"did job {i}"
    with pytest.raises(RemoteError, match="asked to fail"):
        await client.send_task("worker", "fail", timeout=30)

    after: Samples = {}

    async def moved() -> bool:
        nonlocal after
        after = await scrape(port)
        return all(after.get(key, 0) - before.get(key, 0) >= n for key, n in expected.items())

    await eventually(moved)
    moves = {key: after.get(key, 0) - before.get(key, 0) for key in expected}
    assert moves == expected
    assert after[("amqp_agents_handler_duration_seconds_sum", task)] > before.get(
        ("amqp_agents_handler_duration_seconds_sum", task), 0
    )
    assert after[("amqp_agents_handlers_in_flight", labels(agent="worker"))] == 0
    assert after[("amqp_agents_connections_open", labels())] == 1
    assert after[("amqp_agents_reconnects_total", labels())] == 0
    assert not [key for key in after if "message_id" in dict(key[1])]  # bounded labels only
    assert await get(port, "/healthz") == (200, "ok\n")
    assert await get(port, "/readyz") == (200, "ok\n")
    assert (await get(port, "/nothing"))[0] == 404
    await stopped(run)


async def test_readyz_fails_once_the_inbox_is_deleted_in_passive_mode(
    config_file: Callable[[str], Path],
    raw_channel: aio_pika.abc.AbstractChannel,
    namespace: str,
    spawn: Spawn,
    run_cli: Run,
) -> None:
    config = config_file(WORKER.format(passive="true"))
    status, output = await run_cli("topology", "apply", str(config))
    assert status == 0, output
    run, port = await start(spawn, config)
    assert await get(port, "/readyz") == (200, "ok\n")

    for name in wire.inbox_queue_names(namespace, "worker", wire.DEFAULT_QUEUE_TYPE):
        await raw_channel.queue_delete(name)
    await run.expect("its inbox cannot be consumed")

    status, body = await get(port, "/readyz")
    assert (status, body) == (503, "not consuming: worker\n")
    assert await get(port, "/healthz") == (200, "ok\n")  # the process itself is fine
    await stopped(run)


@pytest.fixture
def own_user(rabbitmqctl: str, amqp_url: str, namespace: str) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user and vhost of this test only: (user, AMQP URL); deleted after."""
    user, password = f"{namespace}-user", secrets.token_hex(12)

    def ctl(*args: str) -> None:
        subprocess.run([rabbitmqctl, "-q", *args], check=True, capture_output=True, timeout=60)

    base = urlsplit(amqp_url)
    try:
        ctl("add_vhost", namespace)
        ctl("add_user", user, password)
        ctl("set_permissions", "-p", namespace, user, ".*", ".*", ".*")
        host = f"{base.hostname}:{base.port or 5672}"
        yield user, f"amqp://{user}:{password}@{host}/{quote(namespace, safe='')}"
    finally:
        subprocess.run([rabbitmqctl, "-q", "delete_vhost", namespace], capture_output=True)
        subprocess.run([rabbitmqctl, "-q", "delete_user", user], capture_output=True)


async def test_healthz_fails_once_the_credentials_are_revoked(
    spawn: Spawn, rabbitmqctl: str, own_user: tuple[str, str], tmp_path: Path
) -> None:
    user, url = own_user
    config = tmp_path / "agents.yaml"  # in the test's own vhost, deleted whole after
    config.write_text(WORKER.format(passive="false"), encoding="utf-8")
    run, port = await start(spawn, config, env={"AMQP_URL": url})
    assert await get(port, "/healthz") == (200, "ok\n")

    await asyncio.to_thread(
        subprocess.run, [rabbitmqctl, "-q", "delete_user", user], check=True, timeout=60
    )  # closes its connections; each reconnection is refused
    answers: list[tuple[int, str]] = []

    async def unhealthy() -> bool:
        answers.append(await get(port, "/healthz"))
        return answers[-1][0] == 503

    await eventually(unhealthy, timeout_s=30)
    assert "refused our credentials" in answers[-1][1] or "stopped reconnecting" in answers[-1][1]
    assert await run.finish() == 1  # and the process gives up: a restart is the remedy


async def test_json_log_lines_name_the_message_conversation_and_agent(
    config_file: Callable[[str], Path], queue: MessageQueue, spawn: Spawn
) -> None:
    config = config_file(WORKER.format(passive="false"))
    run = await spawn("run", str(config), "--log-format", "json")
    await run.expect("agent(s) running")
    client = MessagePassingAgent("client", queue)
    handle = await client.send_task("worker", "fail", timeout=30, wait_for_result=False)
    with pytest.raises(RemoteError):
        await handle.result()
    line = await run.expect("dead-lettered message")
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["agent"] == "worker"
    assert entry["message_id"] == handle.message_id
    assert entry["conversation_id"] == handle.message.conversation_id
    assert "trace_id" not in entry  # no tracing configured in that process
    await stopped(run)
    for text in run.lines:
        assert isinstance(json.loads(text), dict), text  # every line is one JSON object


async def test_a_port_in_use_is_one_line_and_the_agents_stop(
    config_file: Callable[[str], Path], run_cli: Run
) -> None:
    config = config_file(WORKER.format(passive="false"))
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = taken.sockets[0].getsockname()[1]
    try:
        status, output = await run_cli(
            "run", str(config), "--metrics-port", str(port), "--metrics-host", "127.0.0.1"
        )
    finally:
        taken.close()
        await taken.wait_closed()
    assert status == 1, output
    (error,) = [line for line in output.splitlines() if "cannot serve probes" in line]
    assert f"observability.metrics_port: cannot serve probes on port {port}" in error
    assert "Traceback" not in output
    assert "all agents stopped" in output
