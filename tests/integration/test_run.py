"""`amqp-agents run`: serves tasks, drains on SIGTERM, and fails early and clearly."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from amqp_agents.config import load_config

from .conftest import Run, Spawn

pytestmark = pytest.mark.rabbitmq_only(
    reason="the CLI runs as a subprocess, which cannot reach the test's in-process broker"
)

RUNNING = "agent(s) running"


async def test_run_serves_a_task_sent_with_send_wait(
    spawn: Spawn, example_config: Path, namespace: str
) -> None:
    run = await spawn("run", str(example_config))
    await run.expect("agent researcher started")
    await run.expect("agent writer started")
    await run.expect(RUNNING)

    send = await spawn(
        "send", "--namespace", namespace, "--to", "researcher", "message queues", "--wait"
    )
    assert await send.finish() == 0, send.output
    assert send.lines[-1] == '"Research completed on: message queues"'
    assert 'status from researcher: {"step": "searching sources"}' in send.lines

    run.process.send_signal(signal.SIGTERM)
    assert await run.finish() == 0, run.output
    assert "all agents stopped" in run.output


async def test_sigterm_drains_the_task_in_flight(
    spawn: Spawn, config_file: Callable[[str], Path], namespace: str
) -> None:
    config = config_file(
        """
        broker: {url: "${AMQP_URL}", namespace: "${AMQP_NAMESPACE}"}
        agents:
          - {id: slow, class: "integration.probe_agents:UntilStopAgent"}
        """
    )
    run = await spawn("run", str(config), "--drain-timeout", "30")
    await run.expect(RUNNING)
    send = await spawn("send", "--namespace", namespace, "--to", "slow", "job-1", "--wait")
    await send.expect("status from")  # the handler is running now

    run.process.send_signal(signal.SIGTERM)
    await run.expect("SIGTERM received: stopping 1 agent(s)")
    assert await send.finish() == 0, send.output
    assert send.lines[-1] == '"finished job-1 after the stop request"'
    assert await run.finish() == 0, run.output
    assert run.lines[-1].endswith("all agents stopped")


STUCK = """
broker: {url: "${AMQP_URL}", namespace: "${AMQP_NAMESPACE}"}
agents:
  - {id: stuck, class: "integration.probe_agents:StuckAgent"}
"""


async def test_drain_is_bounded_by_the_drain_timeout(
    spawn: Spawn, config_file: Callable[[str], Path], namespace: str
) -> None:
    run = await spawn("run", str(config_file(STUCK)), "--drain-timeout", "0.5")
    await run.expect(RUNNING)
    send = await spawn("send", "--namespace", namespace, "--to", "stuck", "forever", "--wait")
    await send.expect("status from")
    run.process.send_signal(signal.SIGTERM)
    await run.expect("stuck: 1 handlers cancelled at stop; their messages return to the inbox")
    assert await run.finish() == 0, run.output


async def test_a_second_signal_cancels_the_drain(
    spawn: Spawn, config_file: Callable[[str], Path], namespace: str
) -> None:
    run = await spawn("run", str(config_file(STUCK)), "--drain-timeout", "600")
    await run.expect(RUNNING)
    send = await spawn("send", "--namespace", namespace, "--to", "stuck", "forever", "--wait")
    await send.expect("status from")
    run.process.send_signal(signal.SIGTERM)
    await run.expect("SIGTERM received")
    run.process.send_signal(signal.SIGINT)
    await run.expect("SIGINT again: cancelling the handlers still running")
    await run.expect("stopped without draining")
    assert await run.finish(timeout_s=30) == 0, run.output


async def test_only_the_selected_agents_run(spawn: Spawn, example_config: Path) -> None:
    run = await spawn("run", str(example_config), "--agent", "writer")
    await run.expect("agent writer started")
    await run.expect(RUNNING)
    run.process.send_signal(signal.SIGINT)
    assert await run.finish() == 0
    assert "1 agent(s) running" in run.output
    assert "agent researcher started" not in run.output


BAD_YAML = """
agents:
  - id: researcher
     class: amqp_agents.demo:ResearchAgent
"""
MISSING_VAR = """
broker:
  url: ${AMQP_TEST_UNSET_VARIABLE}
agents:
  - {id: researcher, class: "amqp_agents.demo:ResearchAgent"}
"""
UNKNOWN_CLASS = """
agents:
  - id: researcher
    class: amqp_agents.demo:NoSuchAgent
"""


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (BAD_YAML, ":3:11: invalid YAML: mapping values are not allowed here"),
        (
            MISSING_VAR,
            ":2: broker.url: environment variable AMQP_TEST_UNSET_VARIABLE is not set"
            " (write ${AMQP_TEST_UNSET_VARIABLE:-default} for a default)",
        ),
        (
            UNKNOWN_CLASS,
            ":3: agents[0].class: cannot import 'amqp_agents.demo:NoSuchAgent':"
            " module 'amqp_agents.demo' has no attribute 'NoSuchAgent'",
        ),
    ],
    ids=["bad-yaml", "missing-env-var", "unknown-class"],
)
async def test_a_bad_config_is_one_clear_line_naming_the_place(
    run_cli: Run, tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    status, output = await run_cli("run", str(path))
    assert status == 1
    assert output.splitlines() == [f"error: {path}{error}"]


async def test_an_unknown_agent_id_is_one_clear_line(run_cli: Run, example_config: Path) -> None:
    status, output = await run_cli("run", str(example_config), "--agent", "ghost")
    assert status == 1
    place = load_config(example_config, env={}).where("agents")  # "<file>:<line>: agents"
    assert output.splitlines() == [
        f"error: {place}: no agent 'ghost' in this file (it defines: researcher, writer)"
    ]


async def test_passive_mode_names_what_is_missing(
    run_cli: Run, config_file: Callable[[str], Path], namespace: str
) -> None:
    config = config_file(
        """
        broker: {url: "${AMQP_URL}", namespace: "${AMQP_NAMESPACE}", passive: true}
        agents:
          - {id: researcher, class: "amqp_agents.demo:ResearchAgent"}
        """
    )
    status, output = await run_cli("run", str(config))
    assert status == 1
    (line,) = output.splitlines()
    assert line.startswith(
        f"error: passive mode: namespace '{namespace}' is incomplete on the broker"
        f" (missing exchange '{namespace}', exchange '{namespace}.dlx'"
    )
    assert line.endswith(
        "; create it first with `amqp-agents topology apply CONFIG` as a user that may configure it"
    )


async def test_run_publishes_the_cards_of_the_config_file(
    spawn: Spawn, config_file: Callable[[str], Path], namespace: str
) -> None:
    config = config_file(
        """
        broker: {url: "${AMQP_URL}", namespace: "${AMQP_NAMESPACE}"}
        agents:
          - id: carded
            class: "integration.probe_agents:UntilStopAgent"
            description: "drafts release notes"
            version: "3.1"
            a2a: {name: "Release notes"}
          - {id: plain, class: "integration.probe_agents:UntilStopAgent"}
        """
    )
    run = await spawn("run", str(config))
    await run.expect(RUNNING)
    agents = await spawn("agents", "--namespace", namespace)
    assert await agents.finish() == 0, agents.output
    rows = {line.split()[0]: line.split() for line in agents.lines[1:]}
    assert rows["carded"][1:3] == ["running", "3.1"], agents.output
    assert agents.lines[1].endswith("drafts release notes")
    assert rows["plain"][1:3] == ["running", "0"], agents.output
    run.process.send_signal(signal.SIGTERM)
    assert await run.finish() == 0, run.output


async def test_a_bad_card_value_stops_run_in_one_line(spawn: Spawn, tmp_path: Path) -> None:
    config = tmp_path / "agents.yaml"  # refused before connecting: nothing to clean up
    config.write_text(
        'broker: {url: "${AMQP_URL}", namespace: "${AMQP_NAMESPACE}"}\n'
        "agents:\n"
        '  - {id: carded, class: "integration.probe_agents:UntilStopAgent", version: 2.0}\n'
    )
    run = await spawn("run", str(config))
    assert await run.finish() != 0
    assert len(run.lines) == 1, run.output
    assert "agents[0].version: write the version as a quoted string" in run.lines[0]
