"""Opening a connection to RabbitMQ, with the URL's password kept out of every message."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPConnectionError

from .errors import BrokerConnectionError

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


async def connect(url: str, *, name: str, timeout_s: float = 10.0) -> AbstractRobustConnection:
    """Open a robust connection (it reconnects and replays declarations by itself).

    Raises:
        BrokerConnectionError: unreachable broker, refused credentials or vhost, timeout.
    """
    try:
        return await aio_pika.connect_robust(
            url,
            timeout=timeout_s,
            client_properties={"connection_name": name},
        )
    except (TimeoutError, AMQPConnectionError, OSError) as exc:
        detail = str(exc).replace(url, redact_url(url)) or type(exc).__name__
        raise BrokerConnectionError(f"cannot connect to {redact_url(url)}: {detail}") from None
