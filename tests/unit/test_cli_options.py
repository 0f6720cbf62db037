"""One rule for every command: where the broker URL and the namespace come from.

url        --url, else the file's broker.url, else $AMQP_URL, else the local broker
namespace  --namespace, else the file's broker.namespace, else $AMQP_NAMESPACE,
           else "agents"
"""

from __future__ import annotations

from pathlib import Path

import pytest

from amqp_agents.cli import parse_args
from amqp_agents.commands import options
from amqp_agents.connection import DEFAULT_URL

EXAMPLE = str(Path(__file__).parents[2] / "config" / "agents.example.yaml")
ENV_URL = "amqp://env-user:pw@env-host:5672/env"
FLAG_URL = "amqp://flag-user:pw@flag-host:5672/"


@pytest.mark.parametrize(
    ("env", "args", "url", "namespace"),
    [
        ({}, [], DEFAULT_URL, "agents"),
        ({"AMQP_URL": ENV_URL, "AMQP_NAMESPACE": "envns"}, [], ENV_URL, "envns"),
        ({"AMQP_URL": ENV_URL, "AMQP_NAMESPACE": "envns"}, ["--config", EXAMPLE], ENV_URL, "envns"),
        ({}, ["--config", EXAMPLE], "amqp://guest:guest@localhost:5672/", "agents"),
        (
            {"AMQP_URL": ENV_URL, "AMQP_NAMESPACE": "envns"},
            ["--config", EXAMPLE, "--url", FLAG_URL, "--namespace", "flagns"],
            FLAG_URL,
            "flagns",
        ),
        ({"AMQP_NAMESPACE": "envns"}, ["--namespace", "flagns"], DEFAULT_URL, "flagns"),
    ],
    ids=["defaults", "environment", "file reads environment", "file", "flags win", "flag"],
)
@pytest.mark.parametrize(
    "command",
    [["send", "hi"], ["history", "--agent", "researcher"]],
    ids=["send", "history"],
)
def test_broker_and_namespace_follow_one_rule(
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    env: dict[str, str],
    args: list[str],
    url: str,
    namespace: str,
) -> None:
    for variable in ("AMQP_URL", "AMQP_NAMESPACE"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    queue = options.message_queue(parse_args([*command, *args]), passive=True)
    assert (queue.url, queue.namespace, queue.passive) == (url, namespace, True)


@pytest.mark.parametrize(
    "command",
    [["run"], ["topology", "plan"], ["topology", "apply"], ["routes", "explain"]],
    ids=" ".join,
)
def test_commands_on_a_file_take_it_as_argument_or_config(command: list[str]) -> None:
    assert parse_args([*command, EXAMPLE]).config == EXAMPLE
    assert parse_args([*command, "--config", EXAMPLE]).config == EXAMPLE


def test_config_given_twice_differently_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["run", EXAMPLE, "--config", "other.yaml"])
    assert exit_info.value.code == 2
    assert "disagree" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "args", "history"),
    [
        ({}, [], "stream"),
        ({"AMQP_HISTORY": "off"}, [], "off"),
        ({"AMQP_HISTORY": "off"}, ["--history", "stream"], "stream"),
        ({}, ["--config", EXAMPLE, "--history", "off"], "off"),
        ({}, ["--config", EXAMPLE], "stream"),
    ],
    ids=["default", "environment", "flag wins", "flag over file", "file"],
)
def test_history_mode_follows_the_rule(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: list[str], history: str
) -> None:
    monkeypatch.delenv("AMQP_HISTORY", raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    queue = options.message_queue(parse_args(["send", "hi", *args]), passive=True)
    assert queue.options.history == history
    assert queue.options.keeps_history == (history == "stream")
