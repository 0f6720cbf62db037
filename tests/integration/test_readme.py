"""The README's shell commands, run exactly as written, in the order written.

Every line of every ``bash`` block is split at ``&&``; each part is run by a shell with
the test's broker ($AMQP_URL) and namespace ($AMQP_NAMESPACE), from the repository
root. ``amqp-agents run`` runs until SIGTERM, so it is started in the background and
stopped at the end. Only the installation and test-suite parts are not run (a test
cannot reinstall the package it runs from); the test fails if any other part is added
without being run.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, CliProcess

pytestmark = pytest.mark.rabbitmq_only(
    reason="the README's commands run as subprocesses against a broker"
)

NOT_RUN = {"pip install .", "pip install -e '.[dev]'", "pytest"}
"""Installing the package and running this suite: what the test itself stands on."""


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks, comments removed, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


async def _start(command: str, env: dict[str, str]) -> CliProcess:
    # exec: the shell becomes the command, so a SIGTERM reaches it and its status is its own.
    process = await asyncio.create_subprocess_shell(
        f"exec {command}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    return CliProcess(process, (command,))


async def test_the_readme_commands_work_as_written(
    cli_env: dict[str, str], example_config: Path
) -> None:
    commands = readme_commands()
    assert set(commands) >= NOT_RUN, "the README changed: update NOT_RUN"
    env = {**cli_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{cli_env['PATH']}"}
    background: list[CliProcess] = []
    outputs: dict[str, str] = {}
    try:
        for command in commands:
            if command in NOT_RUN:
                continue
            cli = await _start(command, env)
            if command.startswith("amqp-agents run "):
                await cli.expect("agent(s) running")
                background.append(cli)
                continue
            status = await cli.finish(timeout_s=60)
            assert status == 0, f"{command}\n{cli.output}"
            outputs[command] = cli.output
    finally:
        for cli in background:
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.finish() == 0, cli.output
            assert "all agents stopped" in cli.output
    assert background, "the README runs the example's agents"
    results = {c: o for c, o in outputs.items() if c.startswith("amqp-agents send")}
    assert results and all(o.splitlines()[-1].startswith('"') for o in results.values())
    explained = [o for c, o in outputs.items() if c.startswith("amqp-agents routes explain")]
    assert explained and all("goes to:" in o for o in explained)
