"""Opening a connection to RabbitMQ (one node or any node of a cluster), with the
URL's password kept out of every message.

A connection reconnects by itself (aio-pika's robust connection), with two additions
in :class:`AgentConnection`:

* **Several nodes.** aio-pika reconnects to its one URL only. Given a cluster
  (``amqp://u:p@h1,h2,h3/vhost``, see :mod:`amqp_agents.broker_url`), each connection
  attempt tries the nodes in turn, starting after the node just lost, and stays on the
  first that answers; a round where none answers waits ``reconnect_interval_s``.
* **Refusals end it.** aio-pika would retry a deleted user, a changed password or a
  revoked vhost for ever, so after ``max_refused_reconnects`` refused rounds in a row
  the connection closes and resolves :attr:`AgentConnection.given_up` with a
  :class:`BrokerConnectionError`.

A vhost that does not exist is reported with the broker's own reason: aiormq drops
the ``connection.close`` that refuses ``connection.open`` and raises a bare
``InvalidFrameError`` (:func:`_keep_close_reason_at_open` fixes that).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aio_pika
import aiormq.connection
from aiormq.exceptions import (
    AMQPError,
    AuthenticationError,
    ConnectionClosed,
    ProbableAuthenticationError,
)
from pamqp import commands as spec
from yarl import URL

from . import _frame_guard, _frame_reader
from ._frame_reader import AgentTransportFactory
from .broker_url import DEFAULT_URL as DEFAULT_URL
from .broker_url import memory_broker, node_urls
from .broker_url import redact_url as redact_url
from .broker_url import resolve_url as resolve_url
from .errors import BrokerConnectionError, BrokerUnreachableError

log = logging.getLogger(__name__)

MAX_REFUSED_RECONNECTS = 5
"""Reconnection rounds refused for our credentials or vhost, in a row, before giving up."""
START_A_BROKER = "start RabbitMQ with `docker compose up -d rabbitmq`, or set AMQP_URL"
"""The hint every "no broker answers" error ends with."""
_NOT_ALLOWED = 530
"""connection.close reply code for a vhost the user may not (or no longer) use."""


def tls_context(
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """A client TLS context for an ``amqps://`` broker.

    Args:
        ca_file: CA bundle that signed the broker's certificate (None: the system CAs).
        cert_file: client certificate, for brokers that authenticate clients by it.
        key_file: the certificate's private key.
        verify: check the broker's certificate and host name; off only for local tests.

    Raises:
        OSError, ssl.SSLError: a file is unreadable or not PEM (callers name the place).
    """
    context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class AgentConnection(aio_pika.RobustConnection):
    """A robust connection that moves between the nodes of a cluster and stops
    reconnecting when the broker keeps refusing us.

    Any failure other than a refusal (unreachable node, reset, timeout) is retried for
    ever, as aio-pika does: those end when a node comes back; a refusal of our
    credentials or vhost does not end by waiting.
    """

    max_refused_reconnects = MAX_REFUSED_RECONNECTS

    def __init__(
        self,
        url: Any,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        nodes: Sequence[str] = (),
        **kwargs: Any,
    ):
        super().__init__(url, loop=loop, **kwargs)
        # Passed on to aiormq's connection (aio-pika's own parameters leave it out):
        # our frames are read by _frame_reader's receiver.
        self.kwargs["transport_factory"] = AgentTransportFactory()
        self.nodes: tuple[str, ...] = tuple(nodes) or (str(url),)
        """One URL per broker node, in the order given (passwords included)."""
        self.node_index = 0
        """Index in :attr:`nodes` of the node in use (or being tried, or tried last)."""
        self.failed_nodes: list[tuple[str, BaseException]] = []
        """The redacted nodes that failed in the latest round, with their errors."""
        self.refusals = 0
        """Connection rounds refused in a row so far."""
        self.given_up: asyncio.Future[BrokerConnectionError] = self.loop.create_future()
        """Resolved, with the error, once this connection stopped reconnecting for good."""
        self._closing: asyncio.Task[None] | None = None

    @property
    def node_url(self) -> str:
        """The (redacted) URL of the node in use (or being tried, or tried last)."""
        return redact_url(self.nodes[self.node_index])

    async def _RobustConnection__connect_transport(self) -> None:
        # One connection round: aio-pika's reconnect loop calls this private method
        # (pinned: aio-pika < 11), so it is where nodes rotate and refusals are counted.
        lost = self.node_index
        self.failed_nodes = []
        first_round = not self.connection_attempt
        start = lost if first_round else lost + 1  # a lost node is tried last
        for step in range(len(self.nodes)):
            index = (start + step) % len(self.nodes)
            # Set together, before the attempt: channels may already work on this node
            # while the attempt still restores others.
            self.node_index, self.url = index, URL(self.nodes[index])
            try:
                await super()._RobustConnection__connect_transport()  # type: ignore[misc]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed_nodes.append((redact_url(self.nodes[index]), exc))
                continue
            self.refusals = 0
            if not first_round and index != lost:
                log.warning(
                    "connected to broker node %s (lost %s)",
                    self.node_url,
                    redact_url(self.nodes[lost]),
                )
            return
        self._round_failed(first_round)

    def _round_failed(self, first_round: bool) -> None:
        """Count a refused round (give up after too many) and raise the round's error:
        a refusal if any node refused us, else the last node's error."""
        errors = [exc for _, exc in self.failed_nodes]
        refusal = next((exc for exc in errors if _refused(exc)), None)
        if refusal is None or first_round:  # the first round: connect() reports it
            raise errors[-1]
        self.refusals += 1
        if self.refusals >= self.max_refused_reconnects and not self.given_up.done():
            self._give_up(refusal)
        raise refusal

    def _give_up(self, exc: BaseException) -> None:
        error = BrokerConnectionError(
            f"the broker at {redact_url(','.join(self.nodes))} refused our credentials or"
            f" vhost {self.refusals} times in a row; stopped reconnecting: {_describe(exc)}"
        )
        self.given_up.set_result(error)
        # Not awaited here: close() cancels the reconnect loop this runs in.
        self._closing = self.loop.create_task(self.close(error))


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, AuthenticationError | ProbableAuthenticationError):
        return True
    return isinstance(exc, ConnectionClosed) and bool(exc.args) and exc.args[0] == _NOT_ALLOWED


def _describe(exc: BaseException) -> str:
    """One line for a connection failure, with the broker's reason when it gave one."""
    if isinstance(exc, ConnectionClosed) and len(exc.args) >= 2:
        code, text = exc.args[0], exc.args[1]
        if code == _NOT_ALLOWED:
            return f"the vhost does not exist or this user may not use it ({text})"
        return f"the broker closed the connection: {text} ({code})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _keep_close_reason_at_open() -> None:
    """Make aiormq raise ``ConnectionClosed(code, reason)`` when the broker answers a
    handshake step (``connection.open`` for a missing vhost) with ``connection.close``.

    aiormq checks the answer against the expected methods before it looks for a close,
    so the broker's reason is lost in an ``InvalidFrameError``. Wrapping the frame
    reader of the handshake (``Connection._rpc``, private to aiormq 7, which aio-pika
    < 11 requires) raises the close first, exactly as aiormq does for a close that it
    does expect; tests/integration/test_connection.py notices if that changes.
    Idempotent.
    """
    connection_class = aiormq.connection.Connection
    original: Any = connection_class._rpc
    if getattr(original, "_amqp_agents_close_reason", False):
        return

    class CloseRaisingReceiver:
        def __init__(self, receiver: Any) -> None:
            self._receiver = receiver

        async def get_frame(self) -> Any:
            received = await self._receiver.get_frame()
            frame = received[2]
            if isinstance(frame, spec.Connection.Close):
                if frame.reply_code == 403:
                    raise ProbableAuthenticationError(frame.reply_text)
                raise ConnectionClosed(frame.reply_code, frame.reply_text)
            return received

    async def rpc(
        request: Any, writer: Any, frame_receiver: Any, wait_response: bool = True
    ) -> Any:
        return await original(request, writer, CloseRaisingReceiver(frame_receiver), wait_response)

    rpc._amqp_agents_close_reason = True  # type: ignore[attr-defined]
    connection_class._rpc = staticmethod(rpc)  # type: ignore[method-assign]


_keep_close_reason_at_open()


async def connect(
    url: str,
    *,
    name: str,
    timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    reconnect_interval_s: float = 1.0,
    max_refused_reconnects: int = MAX_REFUSED_RECONNECTS,
) -> AgentConnection:
    """Open a robust connection to the first node of ``url`` that answers (it
    reconnects, to any node, and replays declarations by itself).

    Args:
        url: the broker URL, one node or several (:mod:`amqp_agents.broker_url`);
            ``amqps://`` uses ``ssl_context`` (default: system CAs).
        name: the connection name the broker shows.
        timeout_s: how long connecting to one node may take.
        ssl_context: TLS settings (see :func:`tls_context`); ignored for ``amqp://``.
        reconnect_interval_s: pause after a round in which no node answered (aio-pika's
            default, 5 s, would keep agents deaf for up to 5 s after the broker is back).
        max_refused_reconnects: reconnection rounds the broker may refuse (deleted
            user, changed password, revoked vhost) in a row before the connection
            closes for good and resolves :attr:`AgentConnection.given_up`.

    Raises:
        ConfigError: the URL is malformed or not amqp:// / amqps://.
        BrokerConnectionError: no node answered, refused credentials or vhost, timeout.
    """
    # Before the first frame: a hostile one must not drop the connection (the why, and
    # the tests: _frame_guard.py). Installed here, not on import, so that importing
    # amqp_agents changes no other library (tests/unit/test_frame_guard.py).
    _frame_guard.install()
    _frame_reader.install()
    if (memory := memory_broker(url)) is not None:
        return await _connect_memory(url, *memory, name=name)
    nodes = node_urls(url)
    connection = AgentConnection(
        URL(nodes[0]),
        nodes=nodes,
        ssl_context=ssl_context,
        client_properties={"connection_name": name},
        reconnect_interval=reconnect_interval_s,
    )
    connection.max_refused_reconnects = max_refused_reconnects
    try:
        await connection.connect(timeout=timeout_s)
    except (TimeoutError, AMQPError, OSError) as exc:
        await connection.close()
        failed = connection.failed_nodes or [(redact_url(url), exc)]
        text = _cannot_connect(failed)
        if all(_unanswered(error) for _, error in failed):
            raise BrokerUnreachableError(f"{text}; {START_A_BROKER}") from None
        raise BrokerConnectionError(text) from None
    return connection


async def _connect_memory(url: str, broker: str, user: str | None, *, name: str) -> AgentConnection:
    """A connection to the in-process broker ``broker`` (:mod:`amqp_agents.memory`)."""
    from .memory.transport import MemoryConnection  # imports this module

    connection = MemoryConnection(
        URL(url),
        broker=broker,
        user=user or "guest",
        client_properties={"connection_name": name},
    )
    await connection.connect()
    return connection


def _unanswered(exc: BaseException) -> bool:
    """Whether a connection attempt failed because nothing answered (no listener, a
    timeout), not because a broker answered: refused us, closed the connection with a
    reason (a missing vhost), or failed the TLS handshake."""
    answered = ConnectionClosed | AuthenticationError | ProbableAuthenticationError | ssl.SSLError
    return not isinstance(exc, answered)


def _cannot_connect(failed: Sequence[tuple[str, BaseException]]) -> str:
    if len(failed) == 1:
        node, error = failed[0]
        return f"cannot connect to {node}: {_describe(error)}"
    each = "; ".join(f"{node}: {_describe(error)}" for node, error in failed)
    return f"cannot connect to any of {len(failed)} broker nodes ({each})"
