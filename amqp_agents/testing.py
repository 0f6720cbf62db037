"""Testing agents without a broker: an in-memory queue, a virtual clock, and helpers
that run an agent and wait for what it handled. A pytest plugin (extra ``testing``:
pytest and pytest-asyncio); enable it with::

    # conftest.py
    pytest_plugins = ["amqp_agents.testing"]

Fixtures (each test gets its own in-process broker, ``memory://test-<random>``):

    memory_url     that broker's URL (forgotten after the test)
    memory_queue   a connected ``MessageQueue`` on it (namespace ``test``), closed after
    virtual_clock  the test's event loop on a :class:`VirtualClock`: whenever nothing is
                   ready to run, time jumps to the next timer, so retry delays, message
                   expiry, ``send_task`` timeouts and ``asyncio.sleep`` take no real time

Helpers: :func:`running` (start an agent, record what its handlers did, stop it) and
:func:`dead_letters` (take what ended in ``{ns}.dead``, with the reason).

What the clock does not move: wall-clock time (``datetime.now``, so message
timestamps and the ``x-deadline-us`` a receiver checks), threads and real IO. It needs
asyncio's own (selector) event loop, as pytest-asyncio uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from . import wire
from .agent import MessagePassingAgent
from .errors import InvalidMessageError
from .memory import forget
from .message import Message
from .queue import MessageQueue

__all__ = [
    "DeadLetter",
    "Handled",
    "Probe",
    "VirtualClock",
    "dead_letters",
    "memory_queue",
    "memory_url",
    "running",
    "virtual_clock",
]


# -- the virtual clock --------------------------------------------------------------------


class VirtualClock:
    """Time for one asyncio event loop that jumps ahead whenever the loop would wait.

    :meth:`install` replaces the loop's clock and wraps its selector: when no callback
    is ready and the loop would block until its next timer, the clock moves to that
    timer instead (any IO that is ready is still handled first).
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._now = 0.0
        self._start = 0.0
        self._selector: Any = None
        self._offset_s: float | None = None

    def time(self) -> float:
        """The virtual time (seconds; the loop's ``time()``)."""
        if self._offset_s is not None:  # uninstalled: real time, continuing from here
            return time.monotonic() + self._offset_s
        return self._now

    @property
    def elapsed_s(self) -> float:
        """Virtual seconds since :meth:`install`, to the nanosecond (the clock adds up
        timer waits in floating point, which may land a hair short of a whole figure)."""
        return round(self._now - self._start, 9)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drive ``loop`` by this clock (until :meth:`uninstall`)."""
        selector = getattr(loop, "_selector", None)
        if not isinstance(selector, selectors.BaseSelector):
            raise RuntimeError(f"a virtual clock needs asyncio's selector event loop, not {loop!r}")
        self._loop = loop
        self._now = self._start = loop.time()
        self._selector = selector
        loop._selector = _JumpingSelector(selector, self)  # type: ignore[attr-defined]
        loop.time = self.time  # type: ignore[method-assign]

    def uninstall(self) -> None:
        """Let time run at its real pace again, on from the virtual time reached (so
        timers already scheduled stay in order, and none waits for the skipped time)."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop._selector = self._selector  # type: ignore[attr-defined]
            self._offset_s = self._now - time.monotonic()

    def _jump(self, seconds: float) -> None:
        self._now += seconds


class _JumpingSelector:
    """The loop's selector, but a wait with a timeout moves the clock instead."""

    def __init__(self, selector: selectors.BaseSelector, clock: VirtualClock) -> None:
        self._selector = selector
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ready = self._selector.select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:  # nothing scheduled at all: only IO can wake the loop
            return self._selector.select(None)
        self._clock._jump(timeout)
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


# -- running agents -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handled:
    """One message an agent's handler finished: its result, or the exception it raised."""

    message: Message
    result: Any = None
    error: BaseException | None = None


class Probe:
    """What one running agent's handlers did, in order (see :func:`running`)."""

    def __init__(self, agent: MessagePassingAgent) -> None:
        self.agent = agent
        self.handled: list[Handled] = []
        self._changed = asyncio.Event()
        self._next_index = 0

    def record(self, handled: Handled) -> None:
        self.handled.append(handled)
        self._changed.set()

    async def wait_for(self, count: int = 1, *, timeout_s: float = 5.0) -> list[Handled]:
        """Wait until the handlers finished ``count`` messages in all; return them.

        Raises:
            TimeoutError: fewer within ``timeout_s`` (virtual seconds under a virtual clock).
        """
        async with asyncio.timeout(timeout_s):
            while len(self.handled) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.handled[:count]

    async def next(self, *, timeout_s: float = 5.0) -> Handled:
        """The next message handled after those already returned by :meth:`next`."""
        index = self._next_index
        await self.wait_for(index + 1, timeout_s=timeout_s)
        self._next_index = index + 1
        return self.handled[index]


@contextlib.asynccontextmanager
async def running(agent: MessagePassingAgent) -> AsyncIterator[Probe]:
    """Run ``agent`` (consuming its inbox) for the block; yield a :class:`Probe` that
    records every message its handlers finish, with the result or the exception."""
    probe = Probe(agent)
    for message_type, handler in list(agent.handlers.items()):
        agent.handlers[message_type] = _recording(handler, probe)
    await agent.start_consuming()
    try:
        yield probe
    finally:
        await agent.stop()


def _recording(
    handler: Callable[[Message], Awaitable[Any]], probe: Probe
) -> Callable[[Message], Awaitable[Any]]:
    async def recorded(message: Message) -> Any:
        try:
            result = await handler(message)
        except Exception as exc:
            probe.record(Handled(message, error=exc))
            raise
        probe.record(Handled(message, result))
        return result

    return recorded


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message taken from ``{ns}.dead``, with why it is there."""

    message: Message
    reason: str
    agent: str | None
    error_type: str | None
    attempts: int | None


async def dead_letters(queue: MessageQueue) -> list[DeadLetter]:
    """Take every message waiting in the namespace's dead letters, oldest first."""
    channel = await queue.channel()
    found: list[DeadLetter] = []
    try:
        dead = await channel.get_queue(wire.dead_queue_name(queue.namespace), ensure=False)
        while (incoming := await dead.get(no_ack=False, fail=False)) is not None:
            await incoming.ack()
            headers = incoming.headers or {}
            try:
                message = wire.decode(incoming)
            except InvalidMessageError:
                continue
            attempts = headers.get(wire.H_DEAD_ATTEMPTS)
            found.append(
                DeadLetter(
                    message,
                    wire.header_text(headers.get(wire.H_DEAD_REASON, "")),
                    _text(headers.get(wire.H_DEAD_AGENT)),
                    _text(headers.get(wire.H_DEAD_ERROR_TYPE)),
                    attempts if isinstance(attempts, int) else None,
                )
            )
    finally:
        await channel.close()
    return found


def _text(value: Any) -> str | None:
    return None if value is None else wire.header_text(value)


# -- pytest fixtures -------------------------------------------------------------------------


@pytest.fixture
def memory_url() -> Iterator[str]:
    """The URL of an in-process broker of this test's own."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield f"memory://{name}"
    forget(name)


@pytest.fixture
async def memory_queue(memory_url: str) -> AsyncIterator[MessageQueue]:
    """A connected MessageQueue (namespace ``test``) on the test's in-process broker."""
    async with MessageQueue(memory_url, namespace="test") as queue:
        yield queue


@pytest.fixture
async def virtual_clock() -> AsyncIterator[VirtualClock]:
    """The test's event loop on a :class:`VirtualClock` for the rest of the test."""
    clock = VirtualClock()
    clock.install(asyncio.get_running_loop())
    try:
        yield clock
    finally:
        clock.uninstall()
