"""docker-compose.yml, checked without a Docker engine: what it runs must be valid here."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from amqp_agents import MessagePassingAgent
from amqp_agents.cli import parse_args
from amqp_agents.commands.topology import cmd_run
from amqp_agents.config import load_config
from amqp_agents.runner import agent_class, prepare

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_agents_start_once_rabbitmq_is_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["rabbitmq"]["healthcheck"]["test"]
    assert services["agents"]["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}


def test_agents_command_runs_an_existing_valid_config(compose: dict[str, Any]) -> None:
    agents = compose["services"]["agents"]
    command = agents["command"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts, "the console script the image installs"
    args = parse_args(command[1:])
    assert args.func is cmd_run
    env = {key: str(value) for key, value in agents["environment"].items()}
    config = load_config(ROOT / args.config, env=env)  # the file exists and is valid

    url = config.broker.secret_url() or env["AMQP_URL"]
    assert urlsplit(url).hostname == "rabbitmq", "AMQP_URL points at the rabbitmq service"
    assert config.agents, "it runs some agents"
    for i, agent in enumerate(config.agents):
        assert issubclass(agent_class(config, i), MessagePassingAgent), agent.class_path
    runner = prepare(config, args.agent or ())  # every agent builds, nothing connects
    assert [a.id for a in runner.agents] == [a.id for a in config.agents]


def test_the_image_installs_the_package_with_its_config(compose: dict[str, Any]) -> None:
    build = compose["services"]["agents"]["build"]
    dockerfile = (ROOT / build / "Dockerfile").read_text(encoding="utf-8")
    assert "pip install" in dockerfile
    assert "COPY config" in dockerfile and "COPY amqp_agents" in dockerfile


def test_files_mounted_into_rabbitmq_exist(compose: dict[str, Any]) -> None:
    for volume in compose["services"]["rabbitmq"].get("volumes", []):
        source = volume.split(":", 1)[0]
        if source.startswith("."):
            assert (ROOT / source).is_file(), source
