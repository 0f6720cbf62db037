"""Broker URLs, one node or several, checked before anything tries to connect.

A cluster is given as one URL whose host part lists its nodes, separated by commas
(the form libpq and most drivers use, and one that fits ``$AMQP_URL``, the YAML
``broker.url`` and ``--url`` unchanged)::

    amqp://agent:secret@rabbit1:5672,rabbit2:5672,rabbit3:5672/prod

Every node then shares the credentials, the vhost and the query options. Two other
spellings are accepted for the same thing: a list of one-node URLs
(``MessageQueue([url1, url2])``) and one-node URLs joined by commas in one string.

Why check here and not let aio-pika find out: aio-pika reads ``localhost`` as a path,
``h1:5672,h2:5672`` as a bad port and a second comma-joined URL as the vhost, and its
robust connection then retries for ever without a word. A wrong URL is a configuration
error, so it is one :class:`~amqp_agents.errors.ConfigError` line, at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
SCHEMES = ("amqp", "amqps")
MEMORY_SCHEME = "memory"
"""``memory://[USER@]NAME``: the in-process broker called NAME (:mod:`amqp_agents.memory`)."""

BrokerUrl = str | Sequence[str]
"""One URL (one node, or several in its host part), or a list of one-node URLs."""

_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
"""A comma that starts another whole URL (scheme and ``://``), not another host."""
_NOT_SHOWN = "(a value not shown: it may hold a password)"


def resolve_url(url: BrokerUrl | None) -> str:
    """The broker URL to use, checked: ``url`` if given, else ``$AMQP_URL``, else
    :data:`DEFAULT_URL`. A list comes back as its URLs joined by commas.

    Raises:
        ConfigError: a URL is malformed, has no scheme, or is not amqp:// / amqps://.
    """
    if url is not None and not isinstance(url, str):
        if not url:
            raise ConfigError("the broker URL list is empty")
        for item in url:
            node_urls(item)
        return ",".join(url)
    from_env = not url and bool(os.environ.get("AMQP_URL"))
    chosen = url or os.environ.get("AMQP_URL") or DEFAULT_URL
    where = " (from $AMQP_URL)" if from_env else ""
    try:
        node_urls(chosen)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{where}") from None
    return chosen


def node_urls(url: str) -> tuple[str, ...]:
    """One complete one-node URL per node of ``url``, in the order given.

    >>> node_urls("amqp://u:p@h1,h2:5673/v")
    ('amqp://u:p@h1/v', 'amqp://u:p@h2:5673/v')

    Raises:
        ConfigError: one line naming what is wrong (the password is never shown).
    """
    if memory_broker(url) is not None:
        return (url.strip(),)
    nodes: list[str] = []
    for whole in _NEXT_URL.split(url.strip()):
        nodes.extend(_split_hosts(whole.strip()))
    return tuple(nodes)


def memory_broker(url: str) -> tuple[str, str | None] | None:
    """(broker name, user) of a ``memory://[USER@]NAME`` URL; None for any other URL.

    >>> memory_broker("memory://"), memory_broker("memory://writer@demo")
    (('', None), ('demo', 'writer'))
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() != MEMORY_SCHEME:
        return None
    user, at, name = rest.rstrip("/").rpartition("@")
    return name, (user.split(":", 1)[0] or None) if at else None


def redact_url(url: str) -> str:
    """The URL with every node's password replaced, safe for logs and errors.

    >>> redact_url("amqps://agent:s3cret@mq1:5671,mq2:5671/prod")
    'amqps://agent:***@mq1:5671,mq2:5671/prod'
    """
    return ",".join(_redact_one(whole) for whole in _NEXT_URL.split(url))


def _redact_one(url: str) -> str:
    if "://" not in url:
        return url if "@" not in url else _NOT_SHOWN
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return _NOT_SHOWN
    if password is None:
        return url
    hosts = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{hosts}"))


def _split_hosts(url: str) -> list[str]:
    shown = _redact_one(url)
    scheme, sep, _ = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise ConfigError(
            f"broker URL {shown!r} has no scheme: write amqp://HOST:5672/VHOST"
            " (or amqps:// for TLS)"
        )
    if scheme.lower() not in SCHEMES:
        raise ConfigError(
            f"broker URL {shown!r} is not AMQP (scheme {scheme!r}): use amqp:// or amqps://"
            " (or memory:// for the in-process broker)"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"broker URL {shown!r} is malformed: {exc}") from None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not hosts.strip(", "):
        raise ConfigError(f"broker URL {shown!r} names no host")
    nodes = []
    for host in hosts.split(","):
        host = host.strip()
        _check_host(host, shown)
        netloc = f"{userinfo}{at}{host}"
        nodes.append(urlunsplit(parts._replace(netloc=netloc)))
    return nodes


def _check_host(host: str, shown: str) -> None:
    """``host`` is ``name``, ``name:port``, ``[v6]`` or ``[v6]:port``; raise if not."""
    if not host:
        raise ConfigError(f"broker URL {shown!r} has an empty host in its node list")
    try:
        port = urlsplit(f"//{host}").port  # also checks the brackets of an IPv6 address
    except ValueError:
        raise ConfigError(
            f"broker URL {shown!r}: {host!r} is not HOST or HOST:PORT (port 1-65535)"
        ) from None
    name = host.rsplit("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    if port == 0 or not name or re.search(r"[\s/?#@]", name):
        raise ConfigError(f"broker URL {shown!r}: {host!r} is not HOST or HOST:PORT (port 1-65535)")
