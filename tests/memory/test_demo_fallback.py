"""``amqp-agents demo`` on a machine without a broker: one line says so, and the whole
conversation runs in memory (issue 13). Run as a user runs it: a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from amqp_agents import BrokerConnectionError, BrokerUnreachableError, MessageQueue

ROOT = Path(__file__).parents[2]
CONVERSATION = [
    ("coordinator", "researcher", "task"),
    ("researcher", "coordinator", "status"),
    ("researcher", "coordinator", "result"),
    ("coordinator", "writer", "task"),
    ("writer", "coordinator", "status"),  # "drafting"
    *[("writer", "coordinator", "status")] * 3,  # the article, streamed in three pieces
    ("writer", "coordinator", "result"),
]


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def demo(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AMQP_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "amqp_agents", "demo", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def assert_whole_conversation(output: str) -> None:
    rows = [line.split() for line in output.splitlines() if line[:1].isdigit() and "->" in line]
    assert [(words[1], words[3], words[4]) for words in rows] == CONVERSATION
    assert "Research: Research completed on: Research AI trends for 2024" in output
    assert "Article:  Article written based on:" in output


def test_demo_without_a_broker_says_so_in_one_line_and_runs_in_memory() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"

    done = demo(url=url)

    assert done.returncode == 0, done.stdout + done.stderr
    first, *rest = done.stdout.splitlines()
    assert first.startswith("No broker answers (cannot connect to amqp://guest:***@127.0.0.1:")
    assert "running the demo in memory instead" in first
    assert "docker compose up -d rabbitmq" in first
    assert not any("No broker" in line for line in rest)
    assert "on memory://demo" in done.stdout
    assert_whole_conversation(done.stdout)
    assert done.stderr == ""


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:1/", "memory://elsewhere"])
def test_demo_memory_runs_in_memory_whatever_the_url(url: str) -> None:
    done = demo("--memory", url=url)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "No broker" not in done.stdout
    assert "on memory://demo" in done.stdout
    assert_whole_conversation(done.stdout)


async def test_no_broker_answering_is_a_typed_error_that_says_how_to_start_one() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"

    with pytest.raises(BrokerUnreachableError) as failed:
        await MessageQueue(url, connect_timeout_s=5).connect()

    assert isinstance(failed.value, BrokerConnectionError)
    assert str(failed.value).startswith("cannot connect to amqp://guest:***@127.0.0.1:")
    assert str(failed.value).endswith(
        "start RabbitMQ with `docker compose up -d rabbitmq`, or set AMQP_URL"
    )
