"""Agent cards from the YAML file: the fields, and one-line errors for bad values."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from amqp_agents import ConfigError
from amqp_agents.cards import AgentCard
from amqp_agents.config import load_config
from amqp_agents.runner import prepare


def write(tmp_path: Path, agent: str) -> Path:
    path = tmp_path / "agents.yaml"
    text = f"""
        broker: {{url: "memory://cards", namespace: cards}}
        agents:
          - {{id: w, class: "amqp_agents.demo:WriterAgent", {agent}}}
        """
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def test_card_fields_become_the_agents_card(tmp_path: Path) -> None:
    path = write(tmp_path, 'description: "writes articles", version: "1.10", a2a: {name: Writer}')
    runner = prepare(load_config(path, env={}))
    card = runner.agents[0].card
    assert (card.description, card.version, card.a2a) == (
        "writes articles",
        "1.10",
        {"name": "Writer"},
    )


def test_fields_left_out_keep_the_class_card(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'version: "2"'), env={})
    assert config.agents[0].card_fields() == {"version": "2"}
    assert AgentCard().model_copy(update=config.agents[0].card_fields()).description == ""


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ("version: 1.10", 'agents[0].version: write the version as a quoted string (e.g. "1.1")'),
        ('version: ""', "agents[0].version: a version is 1 to 64 characters, not blank"),
        ("version: [1]", "agents[0].version: Input should be a valid string"),
        ("description: {a: 1}", "agents[0].description: Input should be a valid string"),
        ("a2a: [x]", "agents[0].a2a: Input should be a valid dictionary"),
        ("a2a: yes", "agents[0].a2a: Input should be a valid dictionary"),
        ("card: {}", "agents[0].card: unknown field"),
    ],
)
def test_bad_card_values_are_one_line_naming_the_field(
    tmp_path: Path, fields: str, complaint: str
) -> None:
    path = write(tmp_path, fields)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "\n" not in message
    assert f"{path}:3: {complaint}" in message
