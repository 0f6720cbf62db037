"""What ``amqp-agents send`` prints and where its content comes from (issue 12, item 8)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from amqp_agents import MessageQueue, MessageType

from .conftest import EXAMPLE, Run
from .test_cli import one_error_line
from .test_cli_config import run_with_input

pytestmark = pytest.mark.rabbitmq_only(
    reason="the CLI runs as a subprocess, which cannot reach the test's in-process broker"
)

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture
async def applied(run_cli: Run, example_config: Path) -> Path:
    """The example's namespace exists (inboxes of researcher, writer, coordinator, monitor)."""
    status, output = await run_cli("topology", "apply", str(example_config))
    assert status == 0, output
    return example_config


async def _take(amqp_url: str, namespace: str, agent_id: str) -> Any:
    """The next message in ``agent_id``'s inbox, read as a plain consumer."""
    async with MessageQueue(amqp_url, namespace=namespace, passive=True) as queue:
        message = await queue.receive(agent_id, timeout=10)
    assert message is not None
    return message


@pytest.mark.parametrize("kind", ["task", "notification"])
async def test_send_prints_the_conversation_id_that_history_finds(
    run_cli: Run, applied: Path, kind: str
) -> None:
    status, output = await run_cli("send", "--type", kind, "--to", "coordinator", "hello")
    assert status == 0, output
    assert output.splitlines()[0] == f"sent {kind} to coordinator"
    conversation = re.search(rf"conversation ({UUID})", output)
    message = re.search(rf"message +({UUID})", output)
    assert conversation and message and conversation[1] != message[1], output
    status, history = await run_cli("history", "--conversation", conversation[1])
    assert status == 0, history
    lines = history.splitlines()
    assert len(lines) == 2 and "cli" in lines[1] and kind in lines[1], history


@pytest.mark.parametrize(
    ("config_args", "where"),
    [
        ([], "sent task to whoever the routes of namespace"),
        (["--config", str(EXAMPLE)], "sent task to routes: researcher, monitor"),
    ],
    ids=["no file", "--config"],
)
async def test_an_unaddressed_task_says_where_it_goes(
    run_cli: Run, applied: Path, config_args: list[str], where: str
) -> None:
    status, output = await run_cli("send", *config_args, "research this")
    assert status == 0, output
    assert output.splitlines()[0].startswith(where), output


async def test_content_file_carries_more_than_a_command_line(
    run_cli: Run, applied: Path, tmp_path: Path, amqp_url: str, namespace: str
) -> None:
    text = "é" + "x" * 200_000  # over the ~128 KB the shell allows one argument
    path = tmp_path / "content.txt"
    path.write_text(text, encoding="utf-8")
    status, output = await run_cli(
        "send", "--type", "notification", "--to", "coordinator", "--content-file", str(path)
    )
    assert status == 0, output
    assert (await _take(amqp_url, namespace, "coordinator")).content == text


@pytest.mark.parametrize(
    ("args", "stdin", "kind", "content"),
    [
        (["-"], "from stdin\n", MessageType.NOTIFICATION, "from stdin\n"),
        (["--json", '{"a": [1, 2]}'], "", MessageType.NOTIFICATION, {"a": [1, 2]}),
        (["--json", "-"], '"text"', MessageType.NOTIFICATION, "text"),
        (["42"], "", MessageType.NOTIFICATION, "42"),
        (
            ["--type", "task", "--json", '{"description": "d", "context": {"k": 1}}'],
            "",
            MessageType.TASK,
            {"description": "d", "context": {"k": 1}},
        ),
    ],
    ids=["stdin", "json", "json from stdin", "text stays text", "json task"],
)
async def test_content_sources(
    applied: Path,
    cli_env: dict[str, str],
    amqp_url: str,
    namespace: str,
    args: list[str],
    stdin: str,
    kind: MessageType,
    content: Any,
) -> None:
    type_args = [] if "--type" in args else ["--type", "notification"]
    status, output = await run_with_input(
        cli_env, stdin, "send", *type_args, "--to", "coordinator", *args
    )
    assert status == 0, output
    message = await _take(amqp_url, namespace, "coordinator")
    assert (message.type, message.content) == (kind, content)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--json", "{not json"], "--json: the content is not JSON"),
        (["--type", "task", "--json", '["a list"]'], '--json: a task is {"description"'),
        (["hi", "--content-file", "x.txt"], "give the content as an argument"),
        ([], "give the content as an argument"),
        (["--content-file", "/nonexistent/content"], "cannot read the content"),
        (["--type", "notification", "--wait", "hi"], "--wait needs --type task and --to"),
    ],
    ids=["bad json", "bad json task", "twice", "none", "missing file", "wait on a notification"],
)
async def test_bad_content_is_one_line(run_cli: Run, args: list[str], problem: str) -> None:
    status, output = await run_cli("send", "--to", "coordinator", *args)
    assert status == 2
    assert problem in one_error_line(output)


async def test_priority_takes_numbers_as_routes_explain_does(
    run_cli: Run, applied: Path, amqp_url: str, namespace: str
) -> None:
    status, output = await run_cli(
        "send", "--type", "notification", "--to", "coordinator", "--priority", "4", "urgent"
    )
    assert status == 0, output
    message = await _take(amqp_url, namespace, "coordinator")
    assert int(message.priority) == 4
    assert json.dumps(message.content) == '"urgent"'
