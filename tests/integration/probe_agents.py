"""Agent classes the CLI tests name in configuration files (``integration.probe_agents:X``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from amqp_agents import HandlerError, MessagePassingAgent


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


class ReplicaAgent(MessagePassingAgent):
    """One of several processes serving the same agent id: answers with its pid and
    prints each task it handles, so a test can check every task was handled once."""

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        print(f"handled {task} in {os.getpid()}", flush=True)
        return {"task": task, "pid": os.getpid()}


class PoisonedAgent(MessagePassingAgent):
    """Its process dies on every task, before any ack: a message that kills its agent."""

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        print(f"dying on {task}", flush=True)
        os._exit(3)


class MoodyAgent(MessagePassingAgent):
    """Does a task, except one whose description is ``fail``: that fails for good (no
    retries), so a test can count handled, failed and dead-lettered messages."""

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        if task == "fail":
            raise HandlerError("asked to fail")
        return f"did {task}"
