"""Opening a connection to RabbitMQ, with the URL's password kept out of every message."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPConnectionError

from . import _frame_guard
from .errors import BrokerConnectionError

_frame_guard.install()  # before any connection: a hostile frame must not drop one

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


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


async def connect(
    url: str,
    *,
    name: str,
    timeout_s: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    reconnect_interval_s: float = 1.0,
) -> AbstractRobustConnection:
    """Open a robust connection (it reconnects and replays declarations by itself).

    Args:
        url: the broker URL; ``amqps://`` uses ``ssl_context`` (default: system CAs).
        name: the connection name the broker shows.
        timeout_s: how long connecting may take.
        ssl_context: TLS settings (see :func:`tls_context`); ignored for ``amqp://``.
        reconnect_interval_s: pause between reconnection attempts after the link is
            lost (aio-pika's default, 5 s, would keep agents deaf for up to 5 s after
            the broker is back).

    Raises:
        BrokerConnectionError: unreachable broker, refused credentials or vhost, timeout.
    """
    try:
        return await aio_pika.connect_robust(
            url,
            timeout=timeout_s,
            client_properties={"connection_name": name},
            ssl_context=ssl_context,
            reconnect_interval=reconnect_interval_s,
        )
    except (TimeoutError, AMQPConnectionError, OSError) as exc:
        detail = str(exc).replace(url, redact_url(url)) or type(exc).__name__
        raise BrokerConnectionError(f"cannot connect to {redact_url(url)}: {detail}") from None
