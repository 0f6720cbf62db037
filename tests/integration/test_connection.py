"""Connecting as a user would get it wrong (bad URLs, a missing vhost) or right (a node
list whose first node is down), from Python and from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import pytest

from amqp_agents import MessageQueue
from amqp_agents.connection import AgentConnection
from amqp_agents.errors import BrokerConnectionError
from amqp_agents.topology import delete_namespace

pytestmark = pytest.mark.rabbitmq_only(
    reason="real connections: vhosts, refused credentials, cluster nodes"
)

ROOT = Path(__file__).parents[2]
DEAD_HOST = "127.0.0.1:1"
"""A node that never answers: nothing listens on port 1."""


def _with_vhost(url: str, vhost: str) -> str:
    return urlsplit(url)._replace(path=f"/{vhost}").geturl()


def _host(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]


def _with_dead_node_first(url: str) -> str:
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo}{at}{DEAD_HOST},{host}").geturl()


async def test_missing_vhost_is_one_line_with_the_brokers_reason(
    amqp_url: str, namespace: str
) -> None:
    queue = MessageQueue(_with_vhost(amqp_url, "no-such-vhost-e1"), namespace=namespace)
    with pytest.raises(BrokerConnectionError) as caught:
        await queue.connect()
    text = str(caught.value)
    assert "vhost does not exist or this user may not use it" in text
    assert "vhost no-such-vhost-e1 not found" in text  # the broker's own words
    assert "\n" not in text


@pytest.mark.parametrize(
    "url_of",
    [
        pytest.param(lambda url: _with_dead_node_first(url), id="host-list"),
        pytest.param(
            lambda url: [_with_dead_node_first(url).replace(f",{_host(url)}", ""), url],
            id="url-list",
        ),
    ],
)
async def test_a_node_list_connects_to_the_first_node_that_answers(
    amqp_url: str, namespace: str, url_of: object
) -> None:
    assert callable(url_of)
    nodes = url_of(amqp_url)
    queue = MessageQueue(nodes, namespace=namespace)
    await queue.connect()
    try:
        connection = queue.connection
        assert isinstance(connection, AgentConnection)
        assert connection.node_index == 1
        assert _host(connection.node_url) == _host(amqp_url)
    finally:
        await queue.close()
        async with await aio_pika.connect(amqp_url) as cleaning:
            await delete_namespace(await cleaning.channel(), namespace)


def test_every_node_down_names_each_node_once(namespace: str) -> None:
    done = _cli(
        "send",
        "--to",
        "x",
        "hi",
        "--namespace",
        namespace,
        env_url=None,
        url="amqp://agent:s3cret-pw@127.0.0.1:1,127.0.0.1:2/",
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: cannot connect to any of 2 broker nodes")
    assert "127.0.0.1:1/" in line and "127.0.0.1:2/" in line
    assert "s3cret-pw" not in done.stderr + done.stdout


def _cli(
    *args: str, url: str | None, env_url: str | None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", **({"AMQP_URL": env_url} if env_url else {})}
    return subprocess.run(
        [sys.executable, "-m", "amqp_agents", *args, *(["--url", url] if url else [])],
        capture_output=True,
        text=True,
        timeout=timeout_s,  # a hang (the old reconnect loop) fails here
        env=env,
        cwd=ROOT,
        check=False,
    )


BAD_URLS = [
    ("localhost", "has no scheme"),
    ("localhost:5672", "has no scheme"),
    ("not a url", "has no scheme"),
    ("http://127.0.0.1:5672/", "is not AMQP"),
]


@pytest.mark.parametrize(("url", "says"), BAD_URLS)
@pytest.mark.parametrize("via", ["--url", "$AMQP_URL"])
def test_cli_refuses_a_bad_url_in_one_line(url: str, says: str, via: str, namespace: str) -> None:
    done = _cli(
        "send",
        "--to",
        "x",
        "hi",
        "--namespace",
        namespace,
        url=url if via == "--url" else None,
        env_url=url if via == "$AMQP_URL" else None,
        timeout_s=30,
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: broker URL") and says in line, line


@pytest.mark.parametrize(
    "command",
    [("send", "--to", "x", "hi"), ("demo",), ("topology", "plan", "config/agents.example.yaml")],
    ids=lambda c: " ".join(c[:2]),
)
def test_cli_missing_vhost_is_one_line(
    command: tuple[str, ...], amqp_url: str, namespace: str
) -> None:
    url = _with_vhost(amqp_url, "no-such-vhost-e1")
    takes_url = command[0] != "topology"
    extra = ("--namespace", namespace) if takes_url else ()
    done = _cli(*command, *extra, url=url if takes_url else None, env_url=url, timeout_s=30)
    assert done.returncode == 1, done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert "the vhost does not exist or this user may not use it" in line, line
    assert "no-such-vhost-e1 not found" in line
