"""The frame guard patches pamqp only when a connection is opened, never on import."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_leaves_pamqp_unpatched() -> None:
    """Importing amqp_agents (everything it exports) must not change another library."""
    probe = (
        "import amqp_agents, amqp_agents.client, amqp_agents.connection, pamqp.decode;"
        "print(getattr(pamqp.decode, '_amqp_agents_guard', False))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_connecting_installs_the_guard_once() -> None:
    """connection.connect installs it (even when the broker is unreachable), idempotently."""
    probe = (
        "import asyncio, pamqp.decode\n"
        "from amqp_agents import BrokerConnectionError\n"
        "from amqp_agents.connection import connect\n"
        "async def main():\n"
        "    for _ in range(2):\n"
        "        try:\n"
        "            await connect('amqp://guest:guest@127.0.0.1:1/', name='probe', timeout_s=2)\n"
        "        except BrokerConnectionError:\n"
        "            pass\n"
        "asyncio.run(main())\n"
        "shortstr = pamqp.decode.METHODS['shortstr']\n"
        "print(pamqp.decode._amqp_agents_guard, shortstr(b'\\x01\\xff')[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "\N{REPLACEMENT CHARACTER}"]
