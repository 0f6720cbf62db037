"""Where a client's history queries are answered: nowhere, the index, or the stream.

One decision per client, made from its settings (docs/history.md)::

    history "off"           HistoryOffError: the namespace keeps no history
    history_db set          the PostgreSQL index (history_index.py), read-your-writes
    otherwise               a bounded scan of the {ns}.history stream (history.py)

The index is opened on the first query (so a client that never asks for history never
connects to PostgreSQL) and closed with the client. ``asyncpg`` is imported only then:
the library works without the ``postgres`` extra as long as no ``history_db`` is set.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import TYPE_CHECKING, Protocol

from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from .errors import ConfigError, HistoryOffError
from .history import HistoryBounds, HistoryQuery, bounded, read_bounded
from .layout import NamespaceOptions
from .message import Message

if TYPE_CHECKING:  # asyncpg is optional: imported only when a database is set
    from .history_index import HistoryIndex

DEFAULT_WAIT_S = 10.0
"""How long an indexed query waits for the indexer to reach its start (read-your-writes)."""


def require_postgres(setting: str) -> None:
    """Raise ConfigError naming ``setting`` when the ``postgres`` extra is missing."""
    if importlib.util.find_spec("asyncpg") is None:
        raise ConfigError(
            f"{setting} needs the postgres extra: pip install 'amqp-agents[postgres]'"
        )


def history_off(namespace: str) -> HistoryOffError:
    """The error of a history query in a namespace whose history is off."""
    return HistoryOffError(
        f"history of namespace {namespace!r} is off, so nothing is kept to query: turn it"
        " on with history='stream' (MessageQueue(history=...), YAML broker.history, CLI"
        " --history stream) in every process of the namespace; messages are kept from then on"
    )


class Client(Protocol):
    """What the reader needs of its client (:class:`amqp_agents.client.BrokerClient`)."""

    namespace: str
    options: NamespaceOptions

    @property
    def connection(self) -> AbstractRobustConnection: ...


class HistoryReader:
    """Answers one client's history queries as its settings say.

    Args:
        client: whose namespace, settings (history on or off) and connection.
        db: PostgreSQL URL of the index (None: scan the stream).
        wait_s: how long an indexed query waits for the indexer (HistoryLagError);
            a query's own ``timeout`` replaces it.

    Raises:
        ConfigError: ``db`` is set with history off. (Without the ``postgres`` extra,
            the first query raises it: a client that only sends needs no database.)
    """

    def __init__(
        self, client: Client, db: str | None = None, wait_s: float = DEFAULT_WAIT_S
    ) -> None:
        if db is not None and not client.options.keeps_history:
            raise ConfigError("history_db is set but history is off: an index needs the stream")
        self.client = client
        self.namespace = client.namespace
        self.db = db
        self.wait_s = wait_s
        self._index: HistoryIndex | None = None
        self._opening = asyncio.Lock()

    async def read(self, query: HistoryQuery, bounds: HistoryBounds) -> list[Message]:
        """The messages matching ``query`` narrowed by ``bounds``.

        Raises:
            HistoryOffError: the namespace's history is off.
            HistoryLagError: (index) the indexer did not reach the query's start in time.
            HistoryTimeoutError: (stream) the scan did not reach the end in time.
            HistoryError: the database cannot be used.
        """
        if not self.client.options.keeps_history:
            raise history_off(self.namespace)
        connection = self.client.connection
        if self.db is None:
            return await read_bounded(connection, self.namespace, query, bounds)
        index = await self._open(connection)
        return await index.query(bounded(query, bounds), wait_s=bounds.get("timeout"))

    async def _open(self, connection: AbstractRobustConnection) -> HistoryIndex:
        async with self._opening:
            if self._index is None:
                require_postgres("history_db")
                from .history_index import HistoryIndex

                assert self.db is not None
                channel: AbstractChannel = await connection.channel(publisher_confirms=True)
                try:
                    self._index = await HistoryIndex.open(
                        self.db, self.namespace, channel, wait_s=self.wait_s
                    )
                except BaseException:
                    await channel.close()
                    raise
            return self._index

    async def close(self) -> None:
        """Close the index's database connections (its channel closes with the client)."""
        index, self._index = self._index, None
        if index is not None:
            await index.close()
