"""Broker URLs: the node-list forms a user may write, and one clear error for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from amqp_agents import MessageQueue
from amqp_agents.broker_url import DEFAULT_URL, node_urls, redact_url, resolve_url
from amqp_agents.config import load_config
from amqp_agents.errors import ConfigError

PASSWORD = "s3cret-pw"


@pytest.mark.parametrize(
    ("url", "nodes"),
    [
        ("amqp://u:p@h1:5672/v", ("amqp://u:p@h1:5672/v",)),
        (
            "amqp://u:p@h1:5672,h2:5673,h3/v",
            ("amqp://u:p@h1:5672/v", "amqp://u:p@h2:5673/v", "amqp://u:p@h3/v"),
        ),
        (
            "amqps://u:p@h1, h2/v?heartbeat=5",
            ("amqps://u:p@h1/v?heartbeat=5", "amqps://u:p@h2/v?heartbeat=5"),
        ),
        ("amqp://u:p@[::1]:5672,h2/%2F", ("amqp://u:p@[::1]:5672/%2F", "amqp://u:p@h2/%2F")),
        ("amqp://a:1@h1/v,amqp://b:2@h2/v", ("amqp://a:1@h1/v", "amqp://b:2@h2/v")),
        ("amqp://u:pa,ss@h1,h2/", ("amqp://u:pa,ss@h1/", "amqp://u:pa,ss@h2/")),
        ("amqp://h1", ("amqp://h1",)),
    ],
)
def test_node_list_forms(url: str, nodes: tuple[str, ...]) -> None:
    assert node_urls(url) == nodes


def test_a_list_of_urls_is_the_same_cluster_as_a_host_list() -> None:
    as_list = resolve_url(["amqp://u:p@h1:5672/v", "amqp://u:p@h2:5672/v"])
    assert node_urls(as_list) == node_urls("amqp://u:p@h1:5672,h2:5672/v")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost", "has no scheme"),
        ("localhost:5672", "has no scheme"),
        ("not a url", "has no scheme"),
        ("127.0.0.1:5672/vhost", "has no scheme"),
        ("http://127.0.0.1:5672/", "is not AMQP (scheme 'http')"),
        ("https://h/", "is not AMQP"),
        ("amqp://", "names no host"),
        ("amqp:///vhost", "names no host"),
        ("amqp://u:p@h1,,h2/", "empty host"),
        ("amqp://u:p@h1:99999/", "'h1:99999' is not HOST or HOST:PORT"),
        ("amqp://u:p@h1:0/", "'h1:0' is not HOST or HOST:PORT"),
        ("amqp://u:p@h1,h2:x/", "'h2:x' is not HOST or HOST:PORT"),
        ("amqp://u:p@h1,amqp:5672/v", None),  # a host named amqp is a host
        ("amqp://u:p@[::1/", "malformed"),
        ("amqp://u:p@h 1/", "'h 1' is not HOST"),
    ],
)
def test_bad_urls_are_one_config_error(url: str, says: str | None) -> None:
    if says is None:
        assert len(node_urls(url)) == 2
        return
    with pytest.raises(ConfigError, match=r"^broker URL ") as caught:
        node_urls(url)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://agent:{PASSWORD}@h1:99999/",
        f"agent:{PASSWORD}@localhost",
        f"http://agent:{PASSWORD}@h/",
        f"amqp://agent:{PASSWORD}@h1,,h2/",
    ],
)
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        node_urls(url)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqps://agent:s3cret@mq.example:5671/prod", "amqps://agent:***@mq.example:5671/prod"),
        ("amqp://a:x@h1:5672,h2:5672/v", "amqp://a:***@h1:5672,h2:5672/v"),
        ("amqp://a:x@h1/v,amqp://b:y@h2/v", "amqp://a:***@h1/v,amqp://b:***@h2/v"),
        ("amqp://h1/v", "amqp://h1/v"),
    ],
)
def test_redaction_covers_every_node(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_amqp_url_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "localhost:5672")
    with pytest.raises(ConfigError, match=r"has no scheme.*\(from \$AMQP_URL\)"):
        MessageQueue()


def test_default_url_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMQP_URL", raising=False)
    assert resolve_url(None) == DEFAULT_URL


@pytest.mark.parametrize("url", ["localhost", "http://127.0.0.1:5672/", ["amqp://h1/", "h2"], []])
def test_message_queue_refuses_a_bad_url_at_once(url: str | list[str]) -> None:
    with pytest.raises(ConfigError):
        MessageQueue(url)


def test_the_yaml_broker_url_takes_a_node_list(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("broker:\n  url: ${AMQP_URL}\n")
    config = load_config(path, env={"AMQP_URL": "amqp://u:p@h1:5672,h2:5672/v"})
    url = resolve_url(config.broker.secret_url())
    assert node_urls(url) == ("amqp://u:p@h1:5672/v", "amqp://u:p@h2:5672/v")
