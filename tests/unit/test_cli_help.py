"""Every command of the amqp-agents CLI has --help."""

from __future__ import annotations

import pytest

from amqp_agents.cli import main

COMMANDS = [
    [],
    ["demo"],
    ["send"],
    ["history"],
    ["run"],
    ["topology"],
    ["topology", "plan"],
    ["topology", "apply"],
    ["topology", "graph"],
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
