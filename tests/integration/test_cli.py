"""The amqp-agents command line, run as a user runs it: a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from amqp_agents import MessageQueue


def run_cli(*args: str, url: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amqp_agents", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={"AMQP_URL": url, "PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.fixture
async def cli_namespace(queue: MessageQueue) -> str:
    """The test's namespace, with the demo's inboxes recorded for deletion at teardown."""
    for agent_id in ("researcher", "writer", "coordinator"):
        await queue.ensure_inbox(agent_id)
    return queue.namespace


def test_demo_runs_the_tutorial_scenario(amqp_url: str, cli_namespace: str) -> None:
    done = run_cli("demo", "--namespace", cli_namespace, url=amqp_url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Research: Research completed on: Research AI trends for 2024" in out
    assert "Article:  Article written based on: Research completed on:" in out
    timeline = out.split("read back from history):", 1)[1].strip().splitlines()
    kinds = [(line.split()[1], line.split()[3], line.split()[4]) for line in timeline]
    assert kinds == [
        ("coordinator", "researcher", "task"),
        ("researcher", "coordinator", "status"),
        ("researcher", "coordinator", "result"),
        ("coordinator", "writer", "task"),
        ("writer", "coordinator", "status"),
        ("writer", "coordinator", "result"),
    ]


def test_unreachable_broker_is_one_clear_line(cli_namespace: str) -> None:
    done = run_cli(
        "send",
        "--to",
        "x",
        "hello",
        "--namespace",
        cli_namespace,
        url="amqp://agent:s3cret-pw@127.0.0.1:1/",
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to")
    assert "s3cret-pw" not in done.stderr + done.stdout


def test_send_to_unknown_recipient_fails_clearly(amqp_url: str, cli_namespace: str) -> None:
    done = run_cli(
        "send",
        "--type",
        "notification",
        "--to",
        "nobody",
        "hi",
        "--namespace",
        cli_namespace,
        url=amqp_url,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: no inbox for recipient 'nobody'")
