"""A small asyncio TCP proxy that can break the network between a client and a broker.

Killing the broker is only one kind of failure. The ones clients handle worst are in
the network: a connection reset under their feet, a link that silently stops carrying
bytes (only heartbeats can notice), a port that stops accepting. Putting this proxy
between a client and a :class:`~private_broker.PrivateBroker` lets a test cause each
of those on demand, deterministically, on loopback, without root or iptables.

Use it from the event loop that runs the clients (the controls are plain methods,
not thread-safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["TCPProxy"]

_CHUNK = 64 * 1024


def _abort_with_reset(writer: asyncio.StreamWriter) -> None:
    """Close a socket so the peer gets an RST (ECONNRESET), not a polite FIN.

    SO_LINGER with a zero timeout makes close() discard unsent data and reset.
    """
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One proxied client connection and its connection to the target."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        _abort_with_reset(self.client)
        if self.upstream is not None:
            _abort_with_reset(self.upstream)
        for pump in self.pumps:
            pump.cancel()  # a pump held by hold() would otherwise wait for release()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class TCPProxy:
    """Forward 127.0.0.1:<port> to ``target_host:target_port``, with fault switches.

    * :meth:`reset_all` — abort every proxied connection now, with an RST both ways
      (the broker also sees its side drop).
    * :meth:`hold` / :meth:`release` — stop forwarding bytes in both directions
      without closing anything: a stalled network, that only heartbeats detect.
    * :meth:`refuse` — accept new connections and reset them at once, as a broker
      whose port is up but which will not talk.

    ``async with TCPProxy(host, port) as proxy:`` starts and closes it.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        connect_timeout: float = 5.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.connect_timeout = connect_timeout
        #: Client connections accepted since start (refused ones included).
        self.accepted_total = 0
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._links: set[_Link] = set()
        # Set (and replaced) whenever _links changes; waiters re-check their condition.
        self._links_changed = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._release_timer: asyncio.TimerHandle | None = None
        self._refusing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> int:
        """Listen on a free port of ``listen_host``; returns that port."""
        if self._server is not None:
            raise RuntimeError("proxy already started")
        self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def close(self) -> None:
        """Stop listening and abort every connection. Safe to call twice."""
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = [link.task for link in self._links if link.task is not None]
        for link in list(self._links):
            link.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> TCPProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ state

    @property
    def port(self) -> int:
        """The port clients connect to."""
        if self._port is None:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def active_connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._links)

    @property
    def held(self) -> bool:
        """True while :meth:`hold` is in effect."""
        return not self._flowing.is_set()

    @property
    def refusing(self) -> bool:
        """True while new connections are reset on arrival."""
        return self._refusing

    def url_for(self, broker_url: str) -> str:
        """``broker_url`` with its port replaced by the proxy's (host 127.0.0.1)."""
        scheme, _, rest = broker_url.partition("://")
        userinfo, at, hostpart = rest.rpartition("@")
        _, slash, tail = hostpart.partition("/")
        prefix = f"{userinfo}{at}" if at else ""
        return f"{scheme}://{prefix}127.0.0.1:{self.port}{slash}{tail}"

    async def wait_for_connections(self, count: int, timeout: float = 10.0) -> None:
        """Wait until exactly ``count`` client connections are open.

        Lets a test synchronise on the proxy's view (e.g. a reconnect arrived, or a
        dropped connection is gone) instead of sleeping.
        """

        async def until_count() -> None:
            while len(self._links) != count:
                await self._links_changed.wait()

        await asyncio.wait_for(until_count(), timeout)

    # ------------------------------------------------------------------ faults

    def reset_all(self) -> int:
        """Abort every proxied connection now (RST to client and target).

        Returns how many were aborted. New connections are still accepted.
        """
        links = list(self._links)
        for link in links:
            link.abort()
        return len(links)

    def hold(self, seconds: float | None = None) -> None:
        """Stop forwarding bytes both ways, closing nothing, for ``seconds`` (None: until
        :meth:`release`).

        Bytes already sent stay buffered in the proxy and are delivered on release;
        an end of stream is not passed on while held either, so neither side can tell
        the link from a dead network except by timing out.
        """
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        self._flowing.clear()
        if seconds is not None:
            self._release_timer = asyncio.get_running_loop().call_later(seconds, self.release)

    def release(self) -> None:
        """Resume forwarding after :meth:`hold`."""
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        self._flowing.set()

    def refuse(self, refusing: bool = True) -> None:
        """While ``refusing``, reset new connections as soon as they are accepted.

        Connections already open are left alone.
        """
        self._refusing = refusing

    # ------------------------------------------------------------------ plumbing

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted_total += 1
        if self._refusing or self._server is None:
            _abort_with_reset(writer)
            return
        link = _Link(client=writer, task=asyncio.current_task())
        self._set_links({*self._links, link})
        reset = True
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port),
                self.connect_timeout,
            )
            link.upstream = up_writer
            link.pumps = [
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            # When one direction ends the connection is over; a clean end of stream
            # is passed on as a clean close, a reset (or error) as a reset.
            done, _ = await asyncio.wait(link.pumps, return_when=asyncio.FIRST_COMPLETED)
            reset = any(pump.cancelled() or pump.exception() is not None for pump in done)
        except (OSError, TimeoutError):
            pass  # the target is down: reset the client
        except asyncio.CancelledError:
            # Only the proxy cancels this task (reset_all, close), meaning "drop the
            # link". Ending normally keeps asyncio's start_server from logging the
            # cancellation as an unhandled error.
            pass
        finally:
            for pump in link.pumps:
                pump.cancel()
            await asyncio.gather(*link.pumps, return_exceptions=True)
            for side in (writer, link.upstream):
                if side is None:
                    continue
                if reset:
                    _abort_with_reset(side)
                else:
                    side.close()
            self._set_links(self._links - {link})

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(_CHUNK)
            await self._flowing.wait()  # hold(): keep the chunk (or the EOF) for later
            if not data:
                return
            writer.write(data)
            await writer.drain()

    def _set_links(self, links: set[_Link]) -> None:
        self._links = links
        self._links_changed.set()
        self._links_changed = asyncio.Event()
