"""The CLI follows the user's configuration and never creates what it only reads.

Issue 12, items 6 (every command takes --config and honours $AMQP_URL and
$AMQP_NAMESPACE the same way; a wait nobody can answer says so at once), 7 (send,
history and routes explain declare nothing; topology delete; the demo's own namespace),
10 (plan/apply import the agent classes; --path) and 12 (the example's pipeline).
What exists on the broker is asked of ``rabbitmqctl``, which lists what AMQP cannot.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import pytest

from amqp_agents import MessageQueue, MessageType, wire
from amqp_agents.config import load_config
from amqp_agents.layout import layout_of
from amqp_agents.topology import delete_namespace

from .conftest import EXAMPLE, ROOT, Run, Spawn
from .test_cli import one_error_line

pytestmark = pytest.mark.rabbitmq_only(
    reason="the CLI runs as a subprocess, which cannot reach the test's in-process broker"
)


def names_on_broker(rabbitmqctl: str, namespace: str) -> set[str]:
    """Every queue and exchange of ``namespace`` on the broker."""
    names: set[str] = set()
    for what in ("list_queues", "list_exchanges"):
        done = subprocess.run(
            [rabbitmqctl, "-q", what, "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        names |= {n for n in done.stdout.split() if n == namespace or n.startswith(f"{namespace}.")}
    return names


async def run_with_input(cli_env: dict[str, str], text: str, *args: str) -> tuple[int, str]:
    """Run a command with ``text`` on its stdin; (exit status, stdout and stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "amqp_agents",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=cli_env,
        cwd=ROOT,
    )
    output, _ = await asyncio.wait_for(process.communicate(text.encode()), 60)
    return await process.wait(), output.decode()


# -- 7. read-only commands declare nothing ----------------------------------------------


READ_ONLY = {
    "send --to": (["send", "--to", "researcher", "hi"], 1),
    "send routed": (["send", "hi"], 1),
    "send --wait": (["send", "--to", "researcher", "hi", "--wait"], 1),
    "send --config": (["send", "--config", str(EXAMPLE), "--to", "researcher", "hi"], 1),
    "history": (["history", "--agent", "researcher"], 1),
    "routes explain": (["routes", "explain", str(EXAMPLE), "--type", "task"], 0),
}


@pytest.mark.parametrize("command", list(READ_ONLY))
async def test_read_only_commands_declare_nothing_in_a_missing_namespace(
    run_cli: Run, rabbitmqctl: str, namespace: str, command: str
) -> None:
    args, expected_status = READ_ONLY[command]
    status, output = await run_cli(*args)
    assert status == expected_status, output
    if status:
        line = one_error_line(output)
        assert f"namespace {namespace!r} does not exist" in line, line
    assert names_on_broker(rabbitmqctl, namespace) == set()


async def test_send_and_history_declare_nothing_in_an_existing_namespace(
    run_cli: Run, rabbitmqctl: str, namespace: str, example_config: Path
) -> None:
    status, output = await run_cli("topology", "apply", str(example_config))
    assert status == 0, output
    before = names_on_broker(rabbitmqctl, namespace)
    for args in (
        ["send", "--to", "researcher", "a task nobody waits for"],
        ["send", "--type", "notification", "--to", "coordinator", "hi"],
        ["send", "--type", "notification", "unaddressed"],
        ["history", "--agent", "researcher"],
    ):
        status, output = await run_cli(*args)
        assert status == 0, output
    assert names_on_broker(rabbitmqctl, namespace) == before


# -- 6. one rule for the broker and the namespace; a wait nobody answers -----------------


@pytest.mark.parametrize(
    "config_args", [[], ["--config", str(EXAMPLE)]], ids=["environment", "--config"]
)
async def test_send_reaches_the_agents_that_run_serves(
    spawn: Spawn, run_cli: Run, example_config: Path, config_args: list[str]
) -> None:
    """The README: `run` the example, then `send --to researcher ... --wait`."""
    agents = await spawn("run", str(example_config))
    await agents.expect("agent(s) running")
    try:
        for _ in range(3):  # the progress report is printed every time, not by luck
            status, output = await run_cli(
                "send", *config_args, "--to", "researcher", "message queues", "--wait"
            )
            assert status == 0, output
            assert 'status from researcher: {"step": "searching sources"}' in output
            assert output.splitlines()[-1] == '"Research completed on: message queues"'
    finally:
        agents.process.send_signal(signal.SIGTERM)
        assert await agents.finish() == 0


async def test_a_wait_on_an_inbox_without_consumer_says_so_at_once(
    run_cli: Run, example_config: Path
) -> None:
    status, output = await run_cli("topology", "apply", str(example_config))
    assert status == 0, output
    started = time.monotonic()
    status, output = await run_cli("send", "--to", "researcher", "hi", "--wait", "--timeout", "30")
    assert status == 1
    assert "no agent is consuming 'researcher' (0 consumers)" in one_error_line(output)
    assert time.monotonic() - started < 15, "at once, not after the 30 s timeout"


# -- 7. topology delete; the demo's own namespace ----------------------------------------


async def _apply_and_fill(run_cli: Run, config: Path) -> None:
    status, output = await run_cli("topology", "apply", str(config))
    assert status == 0, output
    status, output = await run_cli("send", "--type", "notification", "--to", "writer", "hi")
    assert status == 0, output


@pytest.mark.parametrize("answer", ["n\n", "", "yes please\n"], ids=["no", "EOF", "unclear"])
async def test_topology_delete_shows_what_it_deletes_and_deletes_nothing_unless_confirmed(
    run_cli: Run,
    cli_env: dict[str, str],
    rabbitmqctl: str,
    namespace: str,
    example_config: Path,
    answer: str,
) -> None:
    await _apply_and_fill(run_cli, example_config)
    before = names_on_broker(rabbitmqctl, namespace)
    status, output = await run_with_input(cli_env, answer, "topology", "delete", namespace)
    assert status == 1, output
    assert f"queue    {namespace}.inbox.writer  (1 message(s))" in output
    assert f"exchange {namespace}.dlx" in output
    assert "[y/N]" in output and "nothing deleted" in output
    assert names_on_broker(rabbitmqctl, namespace) == before


@pytest.mark.parametrize("how", ["namespace, answer y", "config file, --yes"])
async def test_topology_delete_deletes_the_whole_namespace(
    run_cli: Run,
    cli_env: dict[str, str],
    rabbitmqctl: str,
    namespace: str,
    example_config: Path,
    how: str,
) -> None:
    await _apply_and_fill(run_cli, example_config)
    if how.startswith("namespace"):
        status, output = await run_with_input(cli_env, "y\n", "topology", "delete", namespace)
    else:
        status, output = await run_cli("topology", "delete", str(example_config), "--yes")
    assert status == 0, output
    layout = layout_of(load_config(example_config, env=cli_env))
    queues, exchanges = len(layout.queues), len(layout.exchanges)
    assert f"deleted {queues} queue(s) and {exchanges} exchange(s)" in output
    assert names_on_broker(rabbitmqctl, namespace) == set()


async def test_demo_runs_in_a_namespace_of_its_own_and_deletes_it(
    run_cli: Run, rabbitmqctl: str, namespace: str
) -> None:
    status, output = await run_cli("demo")
    assert status == 0, output
    match = re.search(r"Namespace '(demo-[0-9a-f]{8})'", output)
    assert match, output
    assert match[1] != namespace, "not $AMQP_NAMESPACE: the demo never mixes with real agents"
    assert f"Namespace '{match[1]}' deleted." in output
    assert names_on_broker(rabbitmqctl, match[1]) == set()


async def test_demo_keeps_its_namespace_with_keep(
    run_cli: Run, rabbitmqctl: str, namespace: str, amqp_url: str
) -> None:
    status, output = await run_cli("demo", "--namespace", namespace, "--keep")
    try:
        assert status == 0, output
        assert f"history --namespace {namespace} --conversation" in output
        assert f"{namespace}.inbox.writer" in names_on_broker(rabbitmqctl, namespace)
    finally:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            inboxes = [  # each of the (default, quorum) inbox's lanes
                lane
                for agent in ("researcher", "writer", "coordinator")
                for lane in wire.inbox_queue_names(namespace, agent, wire.DEFAULT_QUEUE_TYPE)
            ]
            await delete_namespace(await connection.channel(), namespace, inboxes)


# -- 10. plan and apply import the agent classes; --path ----------------------------------

SLOW_AGENTS = """
from amqp_agents.agent import MessagePassingAgent



class Slow(MessagePassingAgent):
    pass
"""


@pytest.fixture
def agents_next_to_the_yaml(config_file: object) -> Path:
    """A configuration whose agent class is in a module next to it, not on the path."""
    assert callable(config_file)
    path: Path = config_file(
        """
        broker: {namespace: "${AMQP_NAMESPACE}"}
        agents:
          - {id: slow, class: "slowagents:Slow"}
        """
    )
    (path.parent / "slowagents.py").write_text(SLOW_AGENTS, encoding="utf-8")
    return path


@pytest.mark.parametrize("command", [["topology", "plan"], ["topology", "apply"], ["run"]])
async def test_an_agent_module_off_the_path_is_one_line_with_a_hint(
    run_cli: Run, agents_next_to_the_yaml: Path, command: list[str]
) -> None:
    status, output = await run_cli(*command, str(agents_next_to_the_yaml))
    assert status == 1
    line = one_error_line(output)
    assert "agents[0].class" in line and "No module named 'slowagents'" in line
    assert "--path DIR" in line and "PYTHONPATH" in line


async def test_path_makes_the_module_importable(
    run_cli: Run, agents_next_to_the_yaml: Path
) -> None:
    config = str(agents_next_to_the_yaml)
    status, output = await run_cli(
        "topology", "plan", config, "--path", str(agents_next_to_the_yaml.parent)
    )
    assert status == 0, output
    assert "create   queue" in output


# -- 12. the example's pipeline happens --------------------------------------------------


async def test_the_example_pipeline_feeds_the_writer_and_reports_to_the_coordinator(
    spawn: Spawn, run_cli: Run, example_config: Path, amqp_url: str, namespace: str
) -> None:
    """An unaddressed task goes to the researcher, whose findings go to the writer, whose
    article goes to the coordinator, as the example's comments say."""
    agents = await spawn("run", str(example_config))
    await agents.expect("agent(s) running")
    try:
        status, output = await run_cli("send", "message queues")
        assert status == 0, output
        assert "sent task to whoever the routes" in output
        async with MessageQueue(amqp_url, namespace=namespace, passive=True) as queue:
            report = await queue.receive("coordinator", timeout=30)
        assert report is not None, "the coordinator got no report"
        assert (report.sender, report.type) == ("writer", MessageType.RESULT)
        assert report.content == "Article written based on: Research completed on: message queues"
        status, output = await run_cli("history", "--agent", "writer")
        assert status == 0, output
        assert [line.split()[1] for line in output.splitlines()[1:]] == ["writer"], output
        status, output = await run_cli("history", "--conversation", str(report.conversation_id))
        assert status == 0, output
        routed = [line.split()[1] for line in output.splitlines()[1:] if "(routed)" in line]
        assert routed == ["cli", "researcher", "writer"], output
    finally:
        agents.process.send_signal(signal.SIGTERM)
        assert await agents.finish() == 0
