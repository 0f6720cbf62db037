"""The amqp-agents command line on bad input, run as a user runs it: a subprocess.

Each case reproduces a report of issue 12 (what a new user trips on): the command
must end at once with one line on stderr, never a traceback or a hang.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import EXAMPLE, ROOT, Run

pytestmark = pytest.mark.rabbitmq_only(
    reason="the CLI runs as a subprocess, which cannot reach the test's in-process broker"
)

SCRIPT = Path(sys.executable).parent / "amqp-agents"
"""The console script pip installed, as a user runs it."""


def one_error_line(output: str) -> str:
    """The single ``error:`` line of a failed command (fails the test otherwise)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{output}"
    assert "error:" in lines[0] and "Traceback" not in output, output
    return lines[0]


# -- 1. a vhost that does not exist; 2. a URL that is not an AMQP URL ---------------------

BROKER_COMMANDS = {
    "demo": ["demo"],
    "send": ["send", "--to", "researcher", "hi"],
    "history": ["history", "--agent", "researcher"],
    "topology plan": ["topology", "plan", str(EXAMPLE)],
    "run": ["run", str(EXAMPLE)],
}


@pytest.mark.parametrize("command", list(BROKER_COMMANDS))
async def test_a_vhost_that_does_not_exist_is_one_line(
    run_cli: Run, amqp_url: str, command: str
) -> None:
    no_vhost = urlsplit(amqp_url)._replace(path="/novhost").geturl()  # the test's broker
    status, output = await run_cli(*BROKER_COMMANDS[command], "--url", no_vhost)
    assert status == 1
    line = one_error_line(output)
    assert "novhost" in line and "vhost" in line.replace("novhost", ""), line


@pytest.mark.parametrize(
    "url", ["localhost", "localhost:5672", "not a url", "http://127.0.0.1:5672/"]
)
@pytest.mark.parametrize("source", ["--url", "$AMQP_URL"])
async def test_a_url_that_is_not_amqp_is_one_line_at_once(
    run_cli: Run, url: str, source: str
) -> None:
    args = ["send", "--to", "researcher", "hi"]
    if source == "--url":
        status, output = await run_cli(*args, "--url", url, timeout_s=10)
    else:
        status, output = await run_cli(*args, env={"AMQP_URL": url}, timeout_s=10)
    assert status != 0
    assert "url" in one_error_line(output).lower()


# -- 3. invalid agent ids ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["send", "--to", "bad.id", "hi"],
        ["send", "--from", "me@host", "--to", "researcher", "hi"],
        ["history", "--agent", "bad.id"],
        ["run", str(EXAMPLE), "--agent", "bad.id"],
        ["routes", "explain", str(EXAMPLE), "--sender", "bad.id"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
async def test_an_invalid_agent_id_is_one_line(run_cli: Run, args: list[str]) -> None:
    status, output = await run_cli(*args)
    assert status == 2
    line = one_error_line(output)
    assert "is not an agent id" in line and ("bad.id" in line or "me@host" in line)


# -- 4. Ctrl-C while the library loads -----------------------------------------------------


@pytest.mark.parametrize("after", ["pydantic_core", "aio_pika", "yaml", "amqp_agents.wire"])
@pytest.mark.parametrize(
    "entry", [[str(SCRIPT)], ["-m", "amqp_agents"]], ids=["script", "python-m"]
)
def test_ctrl_c_during_the_imports_ends_quietly(entry: list[str], after: str) -> None:
    """The interrupt lands right after ``after`` finished loading (-X importtime says when),
    through the console script and through ``python -m amqp_agents``."""
    with subprocess.Popen(
        [sys.executable, "-X", "importtime", *entry, "routes", "explain", str(EXAMPLE)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as process:
        assert process.stderr is not None
        for line in process.stderr:
            if line.rsplit("|", 1)[-1].strip() == after:
                process.send_signal(signal.SIGINT)
                break
        else:
            process.kill()
            pytest.fail(f"{after} was never imported")
        rest = process.stderr.read()
        status = process.wait(timeout=30)
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    assert status == 130, "interrupted before the command ran"


def test_the_library_leaves_sigint_alone() -> None:
    """Only running the command line takes SIGINT while loading; an import does not."""
    check = "import amqp_agents, signal; print(signal.getsignal(signal.SIGINT).__name__)"
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert done.stdout.strip() == "default_int_handler", done.stderr


# -- 5. every numeric option is validated --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["send", "--to", "researcher", "hi", "--timeout", "-5"], "--timeout"),
        (["send", "--to", "researcher", "hi", "--timeout", "0"], "--timeout"),
        (["send", "--to", "researcher", "hi", "--timeout", "nan"], "--timeout"),
        (["send", "--to", "researcher", "hi", "--timeout", "soon"], "--timeout"),
        (["demo", "--timeout", "-1"], "--timeout"),
        (["run", str(EXAMPLE), "--drain-timeout", "-3"], "--drain-timeout"),
        (["run", str(EXAMPLE), "--drain-timeout", "inf"], "--drain-timeout"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
async def test_a_bad_number_is_one_line(run_cli: Run, args: list[str], option: str) -> None:
    status, output = await run_cli(*args)
    assert status == 2
    assert f"argument {option}:" in one_error_line(output)


# -- what already worked stays so ----------------------------------------------------------


async def test_unreachable_broker_is_one_clear_line(run_cli: Run) -> None:
    status, output = await run_cli(
        "send", "--to", "x", "hello", "--url", "amqp://agent:s3cret-pw@127.0.0.1:1/"
    )
    assert status == 1
    assert one_error_line(output).startswith("error: cannot connect to")
    assert "s3cret-pw" not in output


async def test_send_to_unknown_recipient_fails_clearly(run_cli: Run, example_config: Path) -> None:
    status, output = await run_cli("topology", "apply", str(example_config))
    assert status == 0, output
    status, output = await run_cli("send", "--type", "notification", "--to", "nobody", "hi")
    assert status == 1
    assert one_error_line(output).startswith("error: no inbox for recipient 'nobody'")
