"""Agent classes the CLI tests name in configuration files (``integration.probe_agents:X``)."""

from __future__ import annotations

import asyncio
from typing import Any

from amqp_agents import MessagePassingAgent


class UntilStopAgent(MessagePassingAgent):
    """Works on each task until the agent is asked to stop: proves that stop() drains.

    It reports a status first, so a test knows the task is in flight without guessing
    how long that takes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stopping = asyncio.Event()

    async def stop(self) -> None:
        self._stopping.set()
        await super().stop()

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        await self.send_status({"step": "working"})
        await self._stopping.wait()
        return f"finished {task} after the stop request"


class StuckAgent(MessagePassingAgent):
    """Never finishes a task: stopping must give up on it after the drain timeout."""

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        await self.send_status({"step": "stuck"})
        await asyncio.Event().wait()
