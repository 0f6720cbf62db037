"""A private three-node RabbitMQ cluster on this machine, for the cluster scenarios.

Built from three :class:`PrivateBroker` nodes, so it inherits their isolation: own
node names, AMQP and distribution ports, data and log dirs, no plugins. What the
nodes share, and only among themselves:

* one epmd on a private port (the first node starts it; the others register in it,
  which is how Erlang distribution finds a peer on the same host);
* one random Erlang cookie, written into each node's private ``$HOME``;
* ``cluster_partition_handling = pause_minority``: a node that loses sight of the
  majority stops serving instead of accepting writes the majority never sees.

The shared broker (5672, 25672, epmd 4369) is never touched: every ``rabbitmqctl``
here runs with ``-n`` set to one of our nodes and with our epmd port and cookie.

With ``isolable_last=True`` the last node runs in a network namespace of its own
(netns.py), reached over a veth link that :meth:`PrivateCluster.cut` takes down: a
real partition. The nodes then have long names on the link's two addresses, and the
isolated node runs its own epmd (same private port) inside its namespace.

Forming it: the nodes boot in parallel as three single-node clusters, then the second
and third ``stop_app``, ``join_cluster`` the first and ``start_app``. As with
:class:`PrivateBroker`, everything is synchronous: async tests call the slow methods
through ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from netns import NetnsLink
from private_broker import BrokerError, PrivateBroker

__all__ = ["PrivateCluster", "QueuePlacement", "record_timing"]

TIMINGS_PATH = Path(__file__).parent / "results" / "cluster-timings.json"

T = TypeVar("T")


def record_timing(name: str, seconds: float, path: Path = TIMINGS_PATH) -> None:
    """Merge one measurement (seconds, or a count) into results/cluster-timings.json."""
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows[name] = round(seconds, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(rows.items())), indent=2) + "\n")


@dataclass(frozen=True)
class QueuePlacement:
    """Where a queue lives: its type, its leader (quorum) or home node (classic), and
    the nodes holding a replica (quorum: all members; classic: the home node)."""

    name: str
    type: str
    leader: str
    members: tuple[str, ...]


class PrivateCluster:
    """Three (or ``size``) private nodes joined into one RabbitMQ cluster.

    Use as a context manager, or call :meth:`start` and then :meth:`cleanup`, which
    stops every node and deletes their files even after a failed start.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        partition_handling: str = "pause_minority",
        start_timeout: float = 120.0,
        isolable_last: bool = False,
        net_ticktime_s: int | None = None,
    ) -> None:
        """Prepare (not start) the nodes.

        ``isolable_last``: run the last node in a network namespace of its own
        (:class:`NetnsLink`, needs root), so :meth:`cut` can partition it from the
        others; the nodes then have long names on the link's addresses.
        ``net_ticktime_s``: how soon a silent node is declared down (Erlang's default,
        60 s, makes a partition take a minute to be noticed).
        """
        if size < 2:
            raise ValueError("a cluster has at least two nodes")
        self.link = NetnsLink() if isolable_last else None
        """The cut-able link of the last node, if ``isolable_last``."""
        host_ip = "127.0.0.1" if self.link is None else self.link.host_ip
        common: dict[str, Any] = {
            "cookie": secrets.token_hex(20).upper(),
            "extra_conf": [f"cluster_partition_handling = {partition_handling}"],
            "start_timeout": start_timeout,
            "net_ticktime_s": net_ticktime_s,
            "ip": host_ip,
            "node_host": "localhost" if self.link is None else host_ip,
        }
        first = PrivateBroker(node_prefix="amqpagents-c1", **common)
        self.nodes: list[PrivateBroker] = [first]
        """The nodes, in the order of :attr:`urls`; ``nodes[0]`` owns the shared epmd."""
        for number in range(2, size + 1):
            options = {**common, "epmd_port": first.epmd_port}
            if self.link is not None and number == size:
                ip = self.link.netns_ip
                options.update(ip=ip, node_host=ip, netns=self.link.name, own_epmd=True)
            self.nodes.append(PrivateBroker(node_prefix=f"amqpagents-c{number}", **options))
        self.start_timeout = start_timeout
        #: Seconds the last :meth:`start` took, boot and join included.
        self.last_start_seconds: float | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def urls(self) -> list[str]:
        """One AMQP URL per node (guest), in node order."""
        return [node.url for node in self.nodes]

    def url(self, order: Sequence[int] | None = None) -> str:
        """The cluster as one URL with a node list in its host part
        (``amqp://guest:guest@127.0.0.1:P1,127.0.0.1:P2,.../``), nodes in ``order``."""
        indexes = range(len(self.nodes)) if order is None else order
        hosts = ",".join(f"{self.nodes[i].ip}:{self.nodes[i].amqp_port}" for i in indexes)
        return f"amqp://guest:guest@{hosts}/"

    def node(self, name: str) -> PrivateBroker:
        """The node whose Erlang node name is ``name``."""
        for node in self.nodes:
            if node.node == name:
                return node
        raise BrokerError(f"{name} is not a node of this cluster")

    def index_of_port(self, port: int) -> int:
        """The index of the node listening for AMQP on ``port``."""
        return next(i for i, node in enumerate(self.nodes) if node.amqp_port == port)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> float:
        """Boot every node, join them into one cluster, return the seconds it took.

        Raises :class:`BrokerError` if a node does not boot or join in time.
        """
        started = time.monotonic()
        if self.link is not None and not self.link.created:
            self.link.create()
        for node in self.nodes:
            if node.owns_epmd:
                node.ensure_epmd()
        self._each(lambda node: node.start())
        first = self.nodes[0].node
        for node in self.nodes[1:]:
            node.stop_app()
            node.ctl("join_cluster", first, timeout=self.start_timeout)
            node.start_app()
        self.wait_running(len(self.nodes))
        self.last_start_seconds = time.monotonic() - started
        return self.last_start_seconds

    def cleanup(self) -> None:
        """Stop every node (in parallel), then the epmd, and delete all files."""
        try:
            self._each(lambda node: node.cleanup(), nodes=self.nodes[1:])
            self.nodes[0].cleanup()
        finally:
            if self.link is not None:
                self.link.remove()

    def __enter__(self) -> PrivateCluster:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def _each(
        self, action: Callable[[PrivateBroker], T], nodes: Sequence[PrivateBroker] | None = None
    ) -> list[T]:
        chosen = self.nodes if nodes is None else nodes
        with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
            return list(pool.map(action, chosen))

    # ------------------------------------------------------------------ faults

    def kill9(self, node: PrivateBroker) -> int:
        """SIGKILL one node's VM (see :meth:`PrivateBroker.kill9`); returns its pid."""
        return node.kill9()

    def restart(self, node: PrivateBroker) -> float:
        """Start a killed or stopped node again and wait until the others see it
        running; returns the seconds it took."""
        started = time.monotonic()
        node.restart_after_kill()
        self.wait_running(self.running_count())
        return time.monotonic() - started

    def stop(self, node: PrivateBroker) -> None:
        """Stop one node cleanly (it leaves the cluster's running set, not the cluster)."""
        node.stop()

    def cut(self) -> None:
        """Partition the last node from the others (and from every client here)."""
        if self.link is None:
            raise BrokerError("this cluster was made without isolable_last=True")
        self.link.cut()

    def heal(self) -> None:
        """End the partition made by :meth:`cut`."""
        if self.link is None:
            raise BrokerError("this cluster was made without isolable_last=True")
        self.link.heal()

    def serving(self, node: PrivateBroker) -> bool:
        """True while ``node``'s RabbitMQ application runs (False when paused by
        pause_minority, or stopped; the VM must be alive to be asked)."""
        return node.eval("rabbit:is_running().") == "true"

    def wait_until(
        self, condition: Callable[[], bool], what: str, timeout: float | None = None
    ) -> float:
        """Poll ``condition`` (a rabbitmqctl call each time) until true; return the
        seconds it took. Raises :class:`BrokerError` naming ``what`` on timeout."""
        started = time.monotonic()
        deadline = started + (self.start_timeout if timeout is None else timeout)
        while not condition():
            if time.monotonic() > deadline:
                raise BrokerError(f"{what}: not within {deadline - started:.0f}s")
            time.sleep(0.2)
        return time.monotonic() - started

    def running_count(self) -> int:
        """How many of our nodes have a live VM."""
        return sum(node.is_running() for node in self.nodes)

    # ------------------------------------------------------------------ state

    def any_running(self) -> PrivateBroker:
        """A node whose VM is alive, to ask about the cluster."""
        for node in self.nodes:
            if node.is_running():
                return node
        raise BrokerError("no node of the cluster is running")

    def running_nodes(self, via: PrivateBroker | None = None) -> set[str]:
        """The node names the cluster reports running (``cluster_status``)."""
        asker = via or self.any_running()
        status = json.loads(asker.ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def wait_running(self, count: int, timeout: float | None = None) -> float:
        """Wait until the cluster reports ``count`` running nodes; returns the seconds."""

        def reached() -> bool:
            try:
                return len(self.running_nodes()) == count
            except BrokerError:  # the node asked went down meanwhile
                return False

        return self.wait_until(reached, f"{count} running nodes", timeout)

    def placement(self, queue: str, vhost: str = "/") -> QueuePlacement:
        """Type, leader and members of ``queue``, as a running node reports them.

        For a classic queue the leader is its home node (list_queues shows only a pid
        there, so the node is asked with ``eval``).
        """
        asker = self.any_running()
        out = asker.ctl(
            "list_queues", "-p", vhost, "name", "type", "leader", "members", "--formatter", "json"
        )
        rows = [row for row in json.loads(out or "[]") if row["name"] == queue]
        if not rows:
            raise BrokerError(f"no queue {queue!r} on vhost {vhost!r}")
        row = rows[0]
        leader = str(row.get("leader") or "") or _home_node(asker, queue, vhost)
        members = row.get("members")
        listed = tuple(str(m) for m in members) if isinstance(members, list) and members else ()
        return QueuePlacement(queue, str(row.get("type", "classic")), leader, listed or (leader,))

    def leader_of(self, queue: str, vhost: str = "/") -> PrivateBroker:
        """The node leading a quorum queue (or the home node of a classic one)."""
        return self.node(self.placement(queue, vhost).leader)

    def others(self, *excluded: PrivateBroker) -> Iterator[PrivateBroker]:
        """The nodes not in ``excluded``, in node order."""
        return (node for node in self.nodes if node not in excluded)


def _home_node(asker: PrivateBroker, queue: str, vhost: str) -> str:
    def binary(text: str) -> str:
        return "<<" + ",".join(str(b) for b in text.encode()) + ">>"

    name = f"rabbit_misc:r({binary(vhost)}, queue, {binary(queue)})"
    out = asker.eval(f"{{ok, Q}} = rabbit_amqqueue:lookup({name}), node(amqqueue:get_pid(Q)).")
    return out.strip("'")
