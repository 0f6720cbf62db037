"""The probes of ``amqp-agents run --metrics-port``: ``/metrics``, ``/healthz``, ``/readyz``.

A small HTTP/1.0 server on the process's own event loop (asyncio streams, no web
framework): a loop that is stuck answers no probe, which a liveness probe must notice.

* ``/healthz`` (liveness): 200 while the connection is open, or lost and recovering
  for less than ``reconnect_budget_s``; 503 once the broker refuses our credentials
  or vhost (waiting does not end that), the connection stopped reconnecting, or it
  has been down longer than the budget. A restart is the remedy for each.
* ``/readyz`` (readiness): 200 while every agent of the process consumes its inbox;
  503 naming those that do not (their inbox deleted and not restorable, the channel
  being reopened, the queue unavailable).
* ``/metrics``: prometheus-client's default registry, in its text format (404 without
  the ``metrics`` extra).

The body of each answer is one line of text saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aio_pika.abc import AbstractRobustConnection

from .agent import MessagePassingAgent

DEFAULT_RECONNECT_BUDGET_S = 60.0
"""How long a lost connection may be recovering before ``/healthz`` fails."""
REQUEST_TIMEOUT_S = 5.0
"""How long a probe's client may take to send its request."""

Check = Callable[[], str | None]
"""A probe's question: why it fails (one line), or None when it passes."""


class ConnectionHealth:
    """Whether a connection is open or recovering within its budget (``/healthz``)."""

    def __init__(self, connection: AbstractRobustConnection, reconnect_budget_s: float) -> None:
        self.connection = connection
        self.reconnect_budget_s = reconnect_budget_s
        self.down_since: float | None = None
        """When the connection was lost (``time.monotonic()``), while it is down."""
        connection.close_callbacks.add(self._lost)
        connection.reconnect_callbacks.add(self._back)

    def _lost(self, *_: object) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()

    def _back(self, *_: object) -> None:
        self.down_since = None

    def problem(self) -> str | None:
        """Why the process should be restarted, or None."""
        connection = self.connection
        given_up = getattr(connection, "given_up", None)
        if given_up is not None and given_up.done() and not given_up.cancelled():
            return f"stopped reconnecting: {given_up.result()}"
        if connection.is_closed:
            return "the broker connection is closed"
        if connection.connected.is_set():
            return None
        if refusals := getattr(connection, "refusals", 0):
            return f"the broker refused our credentials or vhost ({refusals} times in a row)"
        down_s = time.monotonic() - (self.down_since or time.monotonic())
        if down_s > self.reconnect_budget_s:
            budget_s = self.reconnect_budget_s
            return f"the broker connection is down for {down_s:.0f}s (budget {budget_s:g}s)"
        return None


def readiness(agents: Sequence[MessagePassingAgent]) -> Check:
    """The ``/readyz`` question: does every agent consume its inbox?"""

    def problem() -> str | None:
        idle = [agent.id for agent in agents if not agent.consuming]
        return f"not consuming: {', '.join(idle)}" if idle else None

    return problem


def metrics_text() -> tuple[int, str, bytes]:
    """The ``/metrics`` answer: status, content type, body."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
    except ImportError:
        return 404, "text/plain", b"metrics need the extra 'metrics' (prometheus-client)\n"
    return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)


@dataclass
class ProbeServer:
    """Serves the probes on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    host: str
    port: int
    health: Check
    ready: Check
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; the bound port is :attr:`port` afterwards.

        Raises:
            OSError: the address cannot be bound (in use, not ours).
        """
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening (the probes fail from now on)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a GET of ``path``."""
        route = path.split("?", 1)[0]
        if route == "/metrics":
            return metrics_text()
        check = {"/healthz": self.health, "/readyz": self.ready}.get(route)
        if check is None:
            return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"
        problem = check()
        if problem is None:
            return 200, "text/plain", b"ok\n"
        return 503, "text/plain", f"{problem}\n".encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await reader.readline()
                while (await reader.readline()).strip():  # the headers, unused
                    pass
            method, path, *_ = request.decode("latin-1").split() or ["", ""]
            if method not in ("GET", "HEAD"):
                status, kind, body = 405, "text/plain", b"only GET\n"
            else:
                status, kind, body = self.answer(path)
            head = (
                f"HTTP/1.0 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError):
            pass  # a client that sent nothing useful or went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
