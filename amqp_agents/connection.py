"""Opening a connection to RabbitMQ, with the URL's password kept out of every message.

A connection reconnects by itself (aio-pika's robust connection), except when the
broker keeps refusing who we are: aio-pika would retry a deleted user, a changed
password or a revoked vhost for ever, so :class:`AgentConnection` gives up after
``max_refused_reconnects`` refusals in a row, closes, and resolves
:attr:`AgentConnection.given_up` with a :class:`BrokerConnectionError`.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.exceptions import AMQPConnectionError
from aiormq.exceptions import AuthenticationError, ConnectionClosed, ProbableAuthenticationError

from . import _frame_guard
from .errors import BrokerConnectionError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
MAX_REFUSED_RECONNECTS = 5
"""Reconnection attempts refused for our credentials or vhost, in a row, before giving up."""
_NOT_ALLOWED = 530
"""connection.close reply code for a vhost the user may not (or no longer) use."""


def resolve_url(url: str | None) -> str:
    """``url`` if given, else ``$AMQP_URL``, else the local broker's default URL."""
    return url or os.environ.get("AMQP_URL") or DEFAULT_URL


def redact_url(url: str) -> str:
    """The URL with its password replaced, safe for logs and errors.

    >>> redact_url("amqps://agent:s3cret@mq.example:5671/prod")
    'amqps://agent:***@mq.example:5671/prod'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


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
    """A robust connection that stops reconnecting when the broker keeps refusing us.

    Any other failure (unreachable broker, reset, timeout) is retried for ever, as
    aio-pika does: those end when the broker comes back; a refusal of our
    credentials or vhost does not end by waiting.
    """

    max_refused_reconnects = MAX_REFUSED_RECONNECTS

    def __init__(self, url: Any, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any):
        super().__init__(url, loop=loop, **kwargs)
        self.refusals = 0
        """Reconnection attempts refused in a row so far."""
        self.given_up: asyncio.Future[BrokerConnectionError] = self.loop.create_future()
        """Resolved, with the error, once this connection stopped reconnecting for good."""
        self._closing: asyncio.Task[None] | None = None

    async def _RobustConnection__connect_transport(self) -> None:
        # One reconnection attempt: aio-pika's reconnect loop calls this private method
        # (pinned: aio-pika < 11), so it is where refusals can be counted.
        try:
            await super()._RobustConnection__connect_transport()  # type: ignore[misc]
        except (AuthenticationError, ProbableAuthenticationError, ConnectionClosed) as exc:
            if not _refused(exc) or not self.connection_attempt:
                raise  # not a refusal, or the first connect (connect() reports it)
            self.refusals += 1
            if self.refusals >= self.max_refused_reconnects and not self.given_up.done():
                self._give_up(exc)
            raise
        self.refusals = 0

    def _give_up(self, exc: BaseException) -> None:
        error = BrokerConnectionError(
            f"the broker at {self} refused our credentials or vhost {self.refusals} times"
            f" in a row; stopped reconnecting: {exc}"
        )
        self.given_up.set_result(error)
        # Not awaited here: close() cancels the reconnect loop this runs in.
        self._closing = self.loop.create_task(self.close(error))


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, AuthenticationError | ProbableAuthenticationError):
        return True
    return isinstance(exc, ConnectionClosed) and bool(exc.args) and exc.args[0] == _NOT_ALLOWED


async def connect(
    url: str,
    *,
    name: str,
    timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    reconnect_interval_s: float = 1.0,
    max_refused_reconnects: int = MAX_REFUSED_RECONNECTS,
) -> AgentConnection:
    """Open a robust connection (it reconnects and replays declarations by itself).

    Args:
        url: the broker URL; ``amqps://`` uses ``ssl_context`` (default: system CAs).
        name: the connection name the broker shows.
        timeout_s: how long connecting may take.
        ssl_context: TLS settings (see :func:`tls_context`); ignored for ``amqp://``.
        reconnect_interval_s: pause between reconnection attempts after the link is
            lost (aio-pika's default, 5 s, would keep agents deaf for up to 5 s after
            the broker is back).
        max_refused_reconnects: reconnection attempts the broker may refuse (deleted
            user, changed password, revoked vhost) in a row before the connection
            closes for good and resolves :attr:`AgentConnection.given_up`.

    Raises:
        BrokerConnectionError: unreachable broker, refused credentials or vhost, timeout.
    """
    # Before the first frame: a hostile one must not drop the connection (the why, and
    # the tests: _frame_guard.py). Installed here, not on import, so that importing
    # amqp_agents changes no other library (tests/unit/test_frame_guard.py).
    _frame_guard.install()
    try:
        connection = await aio_pika.connect_robust(
            url,
            timeout=timeout_s,
            client_properties={"connection_name": name},
            ssl_context=ssl_context,
            reconnect_interval=reconnect_interval_s,
            connection_class=AgentConnection,
        )
    except (TimeoutError, AMQPConnectionError, OSError) as exc:
        detail = str(exc).replace(url, redact_url(url)) or type(exc).__name__
        raise BrokerConnectionError(f"cannot connect to {redact_url(url)}: {detail}") from None
    assert isinstance(connection, AgentConnection)
    connection.max_refused_reconnects = max_refused_reconnects
    return connection
