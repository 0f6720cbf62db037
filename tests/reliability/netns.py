"""A network namespace joined to this one by one veth link that a test can cut.

A network partition between RabbitMQ nodes on one machine needs the nodes on different
network stacks: a node run inside a :class:`NetnsLink` namespace reaches the rest of
the machine only through its veth pair, so :meth:`NetnsLink.cut` (the host end of the
link goes down) separates it from every other node and client at once, without a
firewall and without touching any other interface.

Addresses: a free /30 in 10.247.0.0/16, the host end ``.1``, the namespace end ``.2``.
Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and ``ip`` (iproute2).

Names carry the owning process id (``aanet-<pid>-<hex>``), so that
:func:`reap_orphans` can delete what a killed test run left behind and nothing else.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import subprocess
from types import TracebackType

__all__ = ["NetnsError", "NetnsLink", "netns_supported", "reap_orphans"]

PREFIX = "aanet-"
_POOL = ipaddress.IPv4Network("10.247.0.0/16")


class NetnsError(RuntimeError):
    """An ``ip`` command failed."""


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def netns_supported() -> str | None:
    """None if this process may create a namespace with a veth link, else why not."""
    probe = NetnsLink()
    try:
        probe.create()
    except (NetnsError, OSError) as exc:
        return str(exc)
    finally:
        probe.remove()
    return None


def _used_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for line in _ip("-o", "addr", "show").splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.ip_network(fields[fields.index("inet") + 1], strict=False))
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    subnets: list[ipaddress.IPv4Network] = list(_POOL.subnets(new_prefix=30))
    for _ in range(200):
        candidate = random.choice(subnets)
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise NetnsError("no free /30 in 10.247.0.0/16")


class NetnsLink:
    """A namespace ``name`` with a veth link to this namespace.

    Attributes:
        name: the namespace (``ip netns exec NAME ...`` runs in it).
        host_ip: the address of this end of the link.
        netns_ip: the address of the namespace end.
    """

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"{PREFIX}{os.getpid()}-{tag}"
        self.host_if = f"aah{tag}"  # interface names: 15 characters at most
        self.netns_if = f"aan{tag}"
        host, peer = list(_free_subnet().hosts())[:2]
        self.host_ip, self.netns_ip = str(host), str(peer)
        self.created = False

    def create(self) -> NetnsLink:
        """Create the namespace and the link, both ends up, loopback up inside."""
        _ip("netns", "add", self.name)
        self.created = True
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.netns_if)
        _ip("link", "set", self.netns_if, "netns", self.name)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        inside = ("netns", "exec", self.name, "ip")
        _ip(*inside, "addr", "add", f"{self.netns_ip}/30", "dev", self.netns_if)
        _ip(*inside, "link", "set", self.netns_if, "up")
        _ip(*inside, "link", "set", "lo", "up")
        return self

    def cut(self) -> None:
        """Take the link down: nothing passes between the namespace and the rest."""
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        """Bring the link back up."""
        _ip("link", "set", self.host_if, "up")

    def remove(self) -> None:
        """Delete the namespace and the link (deleting either end deletes both)."""
        _ip("link", "del", self.host_if, check=False)
        if self.created:
            _ip("netns", "del", self.name, check=False)
            self.created = False

    def __enter__(self) -> NetnsLink:
        try:
            return self.create()
        except BaseException:
            self.remove()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def reap_orphans() -> list[str]:
    """Delete ``aanet-<pid>-*`` namespaces whose owning process is gone."""
    removed = []
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _ip("netns", "del", name, check=False)
            _ip("link", "del", f"aah{name.rsplit('-', 1)[-1]}", check=False)
            removed.append(name)
    return removed
