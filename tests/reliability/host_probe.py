"""What the host tells us, for private RabbitMQ nodes: free ports, epmd registrations,
processes seen through /proc, where RabbitMQ and Erlang are installed, and nodes left
behind by a test run that was killed.

Every check that decides to kill a pid lives here, so that the rule "only ever our own
VM or epmd" is in one place.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "RESERVED_PORTS",
    "UNPREFIXED_RABBIT_VARS",
    "BrokerError",
    "epmd_names",
    "find_epmd",
    "find_scripts_dir",
    "is_beam_of",
    "pick_ports",
    "port_accepts",
    "process_alive",
    "process_environ",
    "process_start_ticks",
    "reap_orphan_nodes",
    "tail",
]

#: Ports never to pick: the shared broker's AMQP, epmd, distribution and management
#: ports, and the range rabbitmqctl's own hidden node listens in.
RESERVED_PORTS = frozenset({4369, 5671, 5672, 15672, 25672, *range(35672, 35683)})

#: Environment variables rabbit_env also reads *without* their ``RABBITMQ_`` prefix;
#: a stray one in the caller's environment must not reach our node.
UNPREFIXED_RABBIT_VARS = frozenset(
    {
        "ADVANCED_CONFIG_FILE",
        "CONFIG_FILE",
        "CONFIG_FILES",
        "CONF_ENV_FILE",
        "DEFAULT_PASS",
        "DEFAULT_USER",
        "DEFAULT_VHOST",
        "DIST_PORT",
        "ENABLED_PLUGINS",
        "ENABLED_PLUGINS_FILE",
        "FEATURE_FLAGS",
        "FEATURE_FLAGS_FILE",
        "KEEP_PID_FILE_ON_EXIT",
        "LOGS",
        "LOG_BASE",
        "MNESIA_BASE",
        "MNESIA_DIR",
        "MOTD_FILE",
        "NODENAME",
        "NODE_IP_ADDRESS",
        "NODE_PORT",
        "PID_FILE",
        "PLUGINS_DIR",
        "PLUGINS_EXPAND_DIR",
        "QUORUM_DIR",
        "STREAM_DIR",
        "USE_LONGNAME",
    }
)


class BrokerError(RuntimeError):
    """A private node did not do what was asked (start, stop, a rabbitmqctl command)."""


def find_scripts_dir() -> Path:
    """Where the real (not ``su``-wrapping) rabbitmq-server and rabbitmqctl live."""
    debian = Path("/usr/lib/rabbitmq/bin")
    if (debian / "rabbitmq-server").exists():
        return debian
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise BrokerError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    return Path(found).resolve().parent


def find_epmd() -> str:
    found = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
    if not Path(found).exists():
        raise BrokerError("epmd (Erlang) is not installed")
    return found


def ephemeral_low() -> int:
    """Lowest port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int) -> list[int]:
    """``count`` distinct free ports in [20000, ephemeral range)."""
    high = max(ephemeral_low(), 20100)
    chosen: list[int] = []
    for _ in range(2000):
        port = random.randrange(20000, high)
        if port in RESERVED_PORTS or port in chosen or not port_is_free(port):
            continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise BrokerError("found no free port for a private RabbitMQ node")


def port_accepts(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1.0):
            return True
    except OSError:
        return False


def epmd_names(ip: str, epmd_port: int) -> set[str] | None:
    """The short node names registered in the epmd on ``epmd_port``; None if it's down.

    Speaks EPMD's NAMES_REQ directly: cheaper than spawning ``epmd -names``.
    """
    try:
        with socket.create_connection((ip, epmd_port), timeout=2.0) as sock:
            sock.sendall(b"\x00\x01n")
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
    except OSError:
        return None
    text = b"".join(chunks)[4:].decode("utf-8", "replace")
    return {line.split()[1] for line in text.splitlines() if line.startswith("name ")}


def process_environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state is the first field after the parenthesised command name.
    return stat.rpartition(")")[2].split()[0] != "Z"


def process_start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} missing)"
    return "\n".join(text.splitlines()[-lines:])


def is_beam_of(pid: int, node: str) -> bool:
    """True if ``pid`` is a live Erlang VM whose environment names ``node``: the check
    that keeps every kill on our own nodes (never the shared broker)."""
    env = process_environ(pid)
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return (
        comm.startswith("beam")
        and env is not None
        and env.get("RABBITMQ_NODENAME") == node
        and process_alive(pid)
    )


def reap_orphan_nodes(workdir_prefix: str) -> list[Path]:
    """Kill and delete private nodes whose owning process died without cleanup.

    Only touches ``<workdir_prefix>*`` temp dirs whose recorded owner process is gone,
    and only kills pids that /proc shows to be that dir's own VM or epmd. Returns the
    dirs removed.
    """
    removed: list[Path] = []
    for workdir in Path(tempfile.gettempdir()).glob(workdir_prefix + "*"):
        try:
            owner = json.loads((workdir / "owner.json").read_text())
        except (OSError, ValueError):
            continue
        owner_start = process_start_ticks(int(owner.get("owner_pid", 0)))
        if owner_start is not None and owner_start == owner.get("owner_start"):
            continue  # its owner is alive (same pid, same start time: not a reuse)
        for pid in orphan_pids(workdir, owner):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(workdir)
    return removed


def orphan_pids(workdir: Path, owner: dict[str, object]) -> Iterator[int]:
    node = str(owner.get("node", ""))
    with contextlib.suppress(OSError, ValueError):
        pid = int((workdir / "rabbit.pid").read_text().strip())
        if node and is_beam_of(pid, node):
            yield pid
    epmd_pid = owner.get("epmd_pid")
    if isinstance(epmd_pid, int):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{epmd_pid}/cmdline").read_bytes().split(b"\0")
            if cmdline[0].endswith(b"epmd") and str(owner.get("epmd_port")).encode() in cmdline:
                yield epmd_pid
