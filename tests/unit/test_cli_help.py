"""Every command of the amqp-agents CLI has --help."""

from __future__ import annotations

import argparse

import pytest

from amqp_agents import MessagePriority
from amqp_agents.cli import build_parser, main, parse_args

COMMANDS = [
    [],
    ["demo"],
    ["send"],
    ["history"],
    ["cancel"],
    ["agents"],
    ["run"],
    ["topology"],
    ["topology", "plan"],
    ["topology", "apply"],
    ["topology", "graph"],
    ["topology", "delete"],
    ["routes"],
    ["routes", "explain"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "amqp-agents")
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: amqp-agents")


def test_a_missing_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: config" in capsys.readouterr().err


def _leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command that runs something, by its name (``topology plan``)."""
    leaves: dict[str, argparse.ArgumentParser] = {}

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            leaves[name] = parser
        for sub in subs:
            for child, child_parser in sub.choices.items():
                walk(f"{name} {child}".strip(), child_parser)

    walk("", build_parser())
    return leaves


LEAVES = _leaf_parsers()


def test_every_command_has_a_help_test() -> None:
    assert set(LEAVES) <= {" ".join(command) for command in COMMANDS}


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_every_command_has_a_description(name: str) -> None:
    assert LEAVES[name].description, f"`amqp-agents {name} --help` says nothing about it"


OPTIONS = [
    (name, action)
    for name, parser in sorted(LEAVES.items())
    for action in parser._actions
    if not isinstance(action, argparse._HelpAction)
]


@pytest.mark.parametrize(
    ("name", "action"), OPTIONS, ids=[f"{n} {a.option_strings or a.dest}" for n, a in OPTIONS]
)
def test_every_option_is_explained_with_its_default(name: str, action: argparse.Action) -> None:
    assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    if not action.option_strings:
        return  # a positional argument: no default to show
    shows_default = action.default in (None, False) or "default" in action.help
    assert shows_default, f"{name} {action.option_strings}: the default is not shown"


@pytest.mark.parametrize("command", [["send", "hi"], ["routes", "explain", "x.yaml"]])
@pytest.mark.parametrize(
    ("value", "priority"),
    [("1", MessagePriority.LOW), ("4", MessagePriority.URGENT), ("high", MessagePriority.HIGH)],
)
def test_priority_is_a_name_or_a_number_everywhere(
    command: list[str], value: str, priority: MessagePriority
) -> None:
    assert parse_args([*command, "--priority", value]).priority is priority


def test_help_shows_the_default_timeouts(capsys: pytest.CaptureFixture[str]) -> None:
    for command, default in ((["send"], "30.0"), (["demo"], "60.0"), (["run"], "30.0")):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert f"(default: {default})" in " ".join(capsys.readouterr().out.split())
