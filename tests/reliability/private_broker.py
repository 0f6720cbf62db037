"""A throw-away RabbitMQ node of our own, for tests that break the broker on purpose.

Why not use the shared broker on 127.0.0.1:5672? Because fault-injection tests kill
-9 it, stop its app, fill its disk alarm and close every connection on it: doing that
to a broker other people (and other test runs) are using would break them. So each
:class:`PrivateBroker` runs a separate node with

* its own node name (``amqpagents-<random>@localhost``), Erlang cookie (in a private
  ``$HOME``) and epmd (own port), so ``rabbitmqctl`` can only ever reach this node;
* its own AMQP port and distribution port, both picked free below the kernel's
  ephemeral range, so an outgoing connection can't take them between a kill and a
  restart;
* its own data, log and config directories under one temp dir, and no plugins
  (so no management listener).

The node is started through ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly (on
Debian, ``/usr/sbin/rabbitmq-server`` is a wrapper that ``su``s to the ``rabbitmq``
user and uses ``/var/lib/rabbitmq``), in the foreground of a child process we own.

Everything here is synchronous: a node takes seconds to start, and async tests
should call the slow methods through ``asyncio.to_thread`` so their event loop (and
the heartbeats of their connections) keeps running meanwhile.

RabbitMQ 3.10 facts this relies on (checked against the 3.10.8 beams):

* ``consumer_timeout`` (ms, rabbitmq.conf) is read once when a channel opens; the
  check runs on the channel's ``tick``, every ``channel_tick_interval`` ms (default
  60000, settable only in advanced.config). So a timeout fires between
  ``consumer_timeout`` and ``consumer_timeout + channel_tick_interval`` after the
  oldest unacked delivery, and closes the channel with 406 PRECONDITION_FAILED.
* ``rabbitmqctl set_disk_free_limit`` re-checks the disk at once, so the alarm is
  raised (or cleared) right away.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["BrokerError", "PrivateBroker"]

#: Prefix of every temp dir this module makes; :meth:`PrivateBroker.reap_orphans` looks
#: for it.
WORKDIR_PREFIX = "amqpagents-broker-"

#: Ports never to pick: the shared broker's AMQP, epmd, distribution and management
#: ports, and the range rabbitmqctl's own hidden node listens in.
_RESERVED_PORTS = frozenset({4369, 5671, 5672, 15672, 25672, *range(35672, 35683)})

#: Environment variables rabbit_env also reads *without* their ``RABBITMQ_`` prefix;
#: a stray one in the caller's environment must not reach our node.
_UNPREFIXED_RABBIT_VARS = frozenset(
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


def _find_scripts_dir() -> Path:
    """Where the real (not ``su``-wrapping) rabbitmq-server and rabbitmqctl live."""
    debian = Path("/usr/lib/rabbitmq/bin")
    if (debian / "rabbitmq-server").exists():
        return debian
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise BrokerError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    return Path(found).resolve().parent


def _find_epmd() -> str:
    found = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
    if not Path(found).exists():
        raise BrokerError("epmd (Erlang) is not installed")
    return found


def _ephemeral_low() -> int:
    """Lowest port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    """``count`` distinct free ports in [20000, ephemeral range)."""
    high = max(_ephemeral_low(), 20100)
    chosen: list[int] = []
    for _ in range(2000):
        port = random.randrange(20000, high)
        if port in _RESERVED_PORTS or port in chosen or not _port_is_free(port):
            continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise BrokerError("found no free port for a private RabbitMQ node")


def _port_accepts(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1.0):
            return True
    except OSError:
        return False


def _epmd_names(ip: str, epmd_port: int) -> set[str] | None:
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


def _process_environ(pid: int) -> dict[str, str] | None:
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


def _process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state is the first field after the parenthesised command name.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _process_start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} missing)"
    return "\n".join(text.splitlines()[-lines:])


class PrivateBroker:
    """One private RabbitMQ node: start it, break it, restart it, throw it away.

    The AMQP port stays the same across restarts, so :attr:`url` stays valid after
    :meth:`kill9` + :meth:`restart_after_kill`. Call :meth:`cleanup` (or use it as a
    context manager) or the node outlives the test run; :meth:`reap_orphans`, run at
    every :meth:`start`, removes nodes whose owning process died without cleaning up.
    """

    def __init__(
        self,
        *,
        consumer_timeout_ms: int | None = 1_800_000,
        channel_tick_interval_ms: int = 1000,
        disk_free_limit: str = "50MB",
        start_timeout: float = 60.0,
        node_prefix: str = "amqpagents",
        epmd_port: int | None = None,
        own_epmd: bool | None = None,
        cookie: str | None = None,
        extra_conf: Sequence[str] = (),
        ip: str = "127.0.0.1",
        node_host: str = "localhost",
        netns: str | None = None,
        net_ticktime_s: int | None = None,
    ) -> None:
        """Prepare (not start) a node.

        ``consumer_timeout_ms``: RabbitMQ's delivery-acknowledgement timeout; None
        disables it. ``channel_tick_interval_ms``: how often each channel checks it
        (RabbitMQ's default 60 s would make timeout tests take a minute).
        ``disk_free_limit``: the normal limit, which :meth:`clear_disk_alarm` restores.
        ``epmd_port``: the epmd port of a private cluster (None: a port of our own);
        ``own_epmd``: start that epmd ourselves (default: when ``epmd_port`` is None;
        a cluster's first node starts the one its peers share, a node in its own
        network namespace starts one there). ``cookie``: the Erlang cookie (a
        cluster's nodes share one; None: a fresh random one). ``extra_conf``: more
        rabbitmq.conf lines. ``ip``: the address the node's AMQP listener, Erlang
        distribution and own epmd listen on. ``node_host``: the host part of the
        node name; an IP address makes it a long name (``-name``), which is how
        nodes on different addresses of one machine find each other. ``netns``: run
        the node, its epmd and its rabbitmqctl inside this network namespace (see
        netns.py), so that its link can be cut. ``net_ticktime_s``: how soon Erlang
        declares a silent peer node down (default 60 s; a partition test wants ~10).
        """
        if consumer_timeout_ms is not None and consumer_timeout_ms <= 0:
            raise ValueError("consumer_timeout_ms must be positive (or None to disable)")
        self.consumer_timeout_ms = consumer_timeout_ms
        self.channel_tick_interval_ms = channel_tick_interval_ms
        self.disk_free_limit = disk_free_limit
        self.start_timeout = start_timeout
        self._scripts = _find_scripts_dir()  # before mkdtemp: fail without leaving a dir
        self._epmd_binary = _find_epmd()
        self.node = f"{node_prefix}-{secrets.token_hex(4)}@{node_host}"
        self.ip = ip
        self.netns = netns
        self.long_name = "." in node_host or ":" in node_host
        self.amqp_port, self.dist_port, own_epmd_port = _pick_ports(3)
        #: False when the epmd is another node's (a cluster): then it is never stopped here.
        self.owns_epmd = epmd_port is None if own_epmd is None else own_epmd
        self.epmd_port = own_epmd_port if epmd_port is None else epmd_port
        self.cookie = cookie or secrets.token_hex(20).upper()
        self.extra_conf = tuple(extra_conf)
        self.net_ticktime_s = net_ticktime_s
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self.home = self.workdir / "home"
        self.log_dir = self.workdir / "log"
        self.pid_file = self.workdir / "rabbit.pid"
        self.startup_log = self.log_dir / "startup.out"
        #: Seconds the last successful :meth:`start` took (None before the first).
        self.last_start_seconds: float | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._cleaned = False
        self._write_files()

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """AMQP URL of the node, as guest (allowed from anywhere: loopback_users = none)."""
        return f"amqp://guest:guest@{self.ip}:{self.amqp_port}/"

    @property
    def log_file(self) -> Path:
        """The node's main log."""
        return self.log_dir / f"{self.node}.log"

    # ------------------------------------------------------------------ setup

    def _write_files(self) -> None:
        for sub in ("home", "log", "mnesia", "conf.d", "plugins-expand"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie file others can read
        conf = [
            f"listeners.tcp.1 = {self.ip}:{self.amqp_port}",
            "loopback_users = none",
            f"disk_free_limit.absolute = {self.disk_free_limit}",
            "log.file.level = info",
            "log.console = false",
            *self.extra_conf,
        ]
        if self.consumer_timeout_ms is not None:
            conf.append(f"consumer_timeout = {self.consumer_timeout_ms}")
        (self.workdir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        # channel_tick_interval has no rabbitmq.conf key in 3.10: advanced.config only.
        # A non-integer consumer_timeout disables the check (rabbitmq.conf can't: its
        # validator wants a positive integer).
        rabbit_env = [f"{{channel_tick_interval, {self.channel_tick_interval_ms}}}"]
        if self.consumer_timeout_ms is None:
            rabbit_env.append("{consumer_timeout, undefined}")
        kernel_env = (
            ""
            if self.net_ticktime_s is None
            else (f", {{kernel, [{{net_ticktime, {self.net_ticktime_s}}}]}}")
        )
        (self.workdir / "advanced.config").write_text(
            "[{rabbit, [" + ", ".join(rabbit_env) + "]}" + kernel_env + "].\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")
        (self.workdir / "owner.json").write_text(
            json.dumps(
                {
                    "owner_pid": os.getpid(),
                    "owner_start": _process_start_ticks(os.getpid()),
                    "node": self.node,
                    "epmd_port": self.epmd_port,
                }
            )
        )

    def _env(self) -> dict[str, str]:
        """The environment of every server, epmd and rabbitmqctl process of this node."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_")) and key not in _UNPREFIXED_RABBIT_VARS
        }
        w = self.workdir
        env.update(
            {
                # The cookie lives in $HOME: the node and its rabbitmqctl share it,
                # and nothing else on the host knows it.
                "HOME": str(self.home),
                "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8",
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": ",".join(sorted({"127.0.0.1", self.ip})),
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
                "RABBITMQ_CONFIG_FILES": str(w / "conf.d"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(w / "plugins-expand"),
                "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.log_dir),
                "RABBITMQ_PID_FILE": str(self.pid_file),
                "RABBITMQ_MOTD_FILE": str(w / "motd"),
                # Distribution on our address only; never start an epmd we don't own.
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    f"-kernel inet_dist_use_interface {{{self.ip.replace('.', ',')}}}"
                    " -start_epmd false"
                ),
            }
        )
        if self.long_name:
            env["RABBITMQ_USE_LONGNAME"] = "true"
        return env

    def _argv(self, *argv: str) -> list[str]:
        """``argv``, run inside this node's network namespace if it has one."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    def ensure_epmd(self, timeout: float = 30.0) -> None:
        """Start this node's own epmd if it is not running (a cluster's first node
        starts the epmd its peers share before any of them boots)."""
        self._ensure_epmd(time.monotonic() + timeout)

    def _ensure_epmd(self, deadline: float) -> None:
        if not self.owns_epmd:
            while _epmd_names(self.ip, self.epmd_port) is None:
                if time.monotonic() > deadline:
                    raise BrokerError(f"the shared epmd on port {self.epmd_port} is not running")
                time.sleep(0.05)
            return
        if self._epmd is not None and self._epmd.poll() is None:
            return
        if self._epmd is not None:
            self._epmd.wait()
        self._epmd = subprocess.Popen(
            self._argv(self._epmd_binary, "-port", str(self.epmd_port)),
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._record_owner(epmd_pid=self._epmd.pid)
        while _epmd_names(self.ip, self.epmd_port) is None:
            if self._epmd.poll() is not None:
                raise BrokerError(f"epmd on port {self.epmd_port} exited ({self._epmd.returncode})")
            if time.monotonic() > deadline:
                raise BrokerError(f"epmd on port {self.epmd_port} did not answer")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._epmd.wait(timeout=0.02)

    def _record_owner(self, **fields: int) -> None:
        path = self.workdir / "owner.json"
        data = json.loads(path.read_text())
        data.update(fields)
        path.write_text(json.dumps(data))

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float | None = None) -> float:
        """Start the node and return once it accepts AMQP connections.

        Returns the seconds it took. Raises :class:`BrokerError` with the tail of the
        node's logs if it exits or is not up within ``timeout`` (default
        ``start_timeout``).
        """
        if self._cleaned:
            raise BrokerError("this PrivateBroker was cleaned up")
        if self._server is not None and self._server.poll() is None:
            raise BrokerError(f"{self.node} is already running")
        self.reap_orphans()
        started = time.monotonic()
        deadline = started + (self.start_timeout if timeout is None else timeout)
        self._ensure_epmd(deadline)
        self._wait_name_released(deadline)
        self.pid_file.unlink(missing_ok=True)
        with self.startup_log.open("ab") as out:
            self._server = subprocess.Popen(
                self._argv(str(self._scripts / "rabbitmq-server")),
                env=self._env(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is for pytest only
            )
        try:
            self._wait_booted(deadline)
        except BaseException:
            self._force_kill()
            raise
        self.last_start_seconds = time.monotonic() - started
        return self.last_start_seconds

    def _wait_booted(self, deadline: float) -> None:
        server = self._server
        assert server is not None
        while True:
            if server.poll() is not None:
                raise self._failure(f"exited with status {server.returncode} while starting")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure("did not start in time")
            if self.pid_file.exists() and self.pid_file.read_text().strip():
                # await_startup fails at once while the node is not yet registered in
                # epmd, and blocks until boot completes once it is; so retry it.
                ctl = subprocess.Popen(
                    self._ctl_argv("await_startup", "--timeout", str(int(remaining) + 1)),
                    env=self._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    while ctl.poll() is None:
                        if server.poll() is not None or time.monotonic() > deadline:
                            break
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            ctl.wait(timeout=0.05)
                finally:
                    if ctl.poll() is None:
                        ctl.kill()
                    ctl.wait()
                if ctl.returncode == 0 and _port_accepts(self.ip, self.amqp_port):
                    return
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=0.05)

    def _failure(self, what: str) -> BrokerError:
        return BrokerError(f"private RabbitMQ {self.node} {what}.\n{self.log_tail()}")

    def _wait_name_released(self, deadline: float) -> None:
        """After a kill, wait until epmd has dropped the old registration."""
        short = self.node.partition("@")[0]
        while short in (_epmd_names(self.ip, self.epmd_port) or set()):
            if time.monotonic() > deadline:
                raise BrokerError(f"{self.node} is still registered in epmd")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the node down cleanly (``rabbitmqctl stop``); a no-op if it is not running.

        Falls back to SIGKILL if the clean stop fails or takes longer than ``timeout``.
        """
        server = self._server
        if server is None:
            return
        if server.poll() is None:
            try:
                # Without a pid file argument rabbitmqctl returns once the node has
                # agreed to stop; waiting on our own child is quicker than its polling.
                self.ctl("stop", timeout=timeout)
                server.wait(timeout=timeout)
            except (BrokerError, subprocess.TimeoutExpired):
                self._force_kill()
        server.wait()
        self._server = None

    def kill9(self, timeout: float = 15.0) -> int:
        """SIGKILL this node's Erlang VM (nothing else) and wait until it is gone.

        Returns the killed OS pid. Connections to the node see their socket drop
        without any AMQP close, as in a crash or power cut.
        """
        pid = self.os_pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        server = self._server
        assert server is not None
        try:
            server.wait(timeout=timeout)  # the launcher script exits once the VM is dead
        except subprocess.TimeoutExpired:
            raise BrokerError(f"{self.node}'s launcher did not exit after kill -9") from None
        while _process_alive(pid):
            if time.monotonic() > deadline:
                raise BrokerError(f"pid {pid} survived kill -9")
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=0.02)
        self._server = None
        return pid

    def restart_after_kill(self, timeout: float | None = None) -> float:
        """Start the node again on the same ports and data after :meth:`kill9`.

        RabbitMQ then recovers from an unclean shutdown: durable queues come back with
        their persistent, confirmed messages; everything else is gone.
        """
        if self._server is not None and self._server.poll() is None:
            raise BrokerError(f"{self.node} is still running; kill9() or stop() it first")
        if self._server is not None:
            self._server.wait()
            self._server = None
        return self.start(timeout)

    def _force_kill(self) -> None:
        """SIGKILL our VM and launcher by pid, whatever state they are in."""
        server = self._server
        if server is None:
            return
        with contextlib.suppress(BrokerError, OSError):
            os.kill(self.os_pid(), signal.SIGKILL)
        if server.poll() is None:
            server.kill()
        server.wait()

    def cleanup(self) -> None:
        """Stop the node and epmd and delete the temp dir. Safe to call twice."""
        if self._cleaned:
            return
        try:
            self.stop()
        finally:
            if self._epmd is not None:
                if self._epmd.poll() is None:
                    self._epmd.terminate()
                    try:
                        self._epmd.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        self._epmd.kill()
                        self._epmd.wait()
                self._epmd = None
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._cleaned = True

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ state

    def os_pid(self) -> int:
        """OS pid of this node's Erlang VM, from its pid file, checked via /proc.

        The check (a beam.smp whose environment names this node) is what guarantees
        :meth:`kill9` never hits the shared broker or anything else.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            raise BrokerError(f"{self.node} has no pid file; is it running?") from None
        if not self._is_our_beam(pid):
            raise BrokerError(f"pid {pid} in {self.pid_file} is not {self.node}'s VM")
        return pid

    def _is_our_beam(self, pid: int) -> bool:
        env = _process_environ(pid)
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return False
        return (
            comm.startswith("beam")
            and env is not None
            and env.get("RABBITMQ_NODENAME") == self.node
            and _process_alive(pid)
        )

    def is_running(self) -> bool:
        """True while the node's VM process is alive (even with the app stopped)."""
        return self._server is not None and self._server.poll() is None

    def ping(self) -> bool:
        """True if rabbitmqctl can reach the node."""
        try:
            self.ctl("ping", timeout=15)
        except BrokerError:
            return False
        return True

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the node's startup output and of its log."""
        return (
            f"--- {self.startup_log} ---\n{_tail(self.startup_log, lines)}\n"
            f"--- {self.log_file} ---\n{_tail(self.log_file, lines)}"
        )

    # ------------------------------------------------------------------ rabbitmqctl

    def _ctl_argv(self, *args: str) -> list[str]:
        names = ("--longnames",) if self.long_name else ()
        return self._argv(str(self._scripts / "rabbitmqctl"), "-n", self.node, *names, "-q", *args)

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``rabbitmqctl -n NODE -q ARGS`` and return its stdout."""
        try:
            done = subprocess.run(
                self._ctl_argv(*args),
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BrokerError(f"rabbitmqctl {' '.join(args)} timed out after {timeout}s") from None
        if done.returncode != 0:
            raise BrokerError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def eval(self, expression: str, timeout: float = 30.0) -> str:
        """Evaluate an Erlang expression on the node; returns the printed result."""
        return self.ctl("eval", expression, timeout=timeout).strip()

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (closes every connection and the listener).

        The VM stays up, so ``rabbitmqctl`` still answers.
        """
        self.ctl("stop_app", timeout=60)

    def start_app(self) -> None:
        """Start the RabbitMQ application again after :meth:`stop_app`."""
        self.ctl("start_app", timeout=60)

    def close_all_connections(self, reason: str = "closed by a reliability test") -> None:
        """Close every client connection (all vhosts) with a connection.close."""
        self.ctl("close_all_connections", "--global", reason)

    def set_disk_free_limit(self, limit: int | str) -> None:
        """Set the disk free limit: bytes, or a string with units ("1GB", "50MB").

        A limit above the free space raises the disk alarm at once: publishing
        connections get ``connection.blocked`` and the broker stops reading from them,
        so publishes stall (no confirm) until the alarm clears.
        """
        self.ctl("set_disk_free_limit", str(limit))

    def disk_alarm_active(self) -> bool:
        """True while this node has a disk resource alarm."""
        out = self.eval(
            "lists:any(fun({{resource_limit, disk, _}, _}) -> true; (_) -> false end, "
            "rabbit_alarm:get_alarms())."
        )
        return out == "true"

    def trigger_disk_alarm(self, timeout: float = 10.0) -> None:
        """Raise the disk alarm (limit far above any disk) and wait until it is on."""
        self.set_disk_free_limit(2**62)
        self._wait_disk_alarm(True, timeout)

    def clear_disk_alarm(self, timeout: float = 10.0) -> None:
        """Restore the configured disk limit and wait until the alarm is off."""
        self.set_disk_free_limit(self.disk_free_limit)
        self._wait_disk_alarm(False, timeout)

    def _wait_disk_alarm(self, wanted: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.disk_alarm_active() != wanted:  # each check is a ~0.4 s CLI call
            if time.monotonic() > deadline:
                state = "on" if wanted else "off"
                raise BrokerError(f"disk alarm of {self.node} did not turn {state}")

    def set_consumer_timeout(self, milliseconds: int | None) -> None:
        """Change consumer_timeout at run time. Applies to channels opened afterwards only."""
        value = "undefined" if milliseconds is None else str(int(milliseconds))
        self.eval(f"application:set_env(rabbit, consumer_timeout, {value}).")

    def add_user(self, name: str, password: str, tags: Sequence[str] = ()) -> None:
        """Create a user (no permissions yet); ``tags`` e.g. ("administrator",)."""
        self.ctl("add_user", name, password)
        if tags:
            self.ctl("set_user_tags", name, *tags)

    def set_permissions(
        self,
        user: str,
        configure: str = ".*",
        write: str = ".*",
        read: str = ".*",
        *,
        vhost: str = "/",
    ) -> None:
        """Grant ``user`` configure/write/read regexes on ``vhost``."""
        self.ctl("set_permissions", "-p", vhost, user, configure, write, read)

    def set_topic_permissions(
        self,
        user: str,
        exchange: str,
        write: str = ".*",
        read: str = ".*",
        *,
        vhost: str = "/",
    ) -> None:
        """Limit which routing keys ``user`` may publish (write) / bind (read) on a topic
        exchange."""
        self.ctl("set_topic_permissions", "-p", vhost, user, exchange, write, read)

    def delete_user(self, name: str) -> None:
        """Delete a user; its open connections are closed by the broker."""
        self.ctl("delete_user", name)

    def list_queues(self, vhost: str = "/") -> dict[str, int]:
        """Queue name -> number of messages (ready + unacked) on ``vhost``."""
        out = self.ctl("list_queues", "-p", vhost, "name", "messages", "--formatter", "json")
        rows: list[dict[str, object]] = json.loads(out or "[]")
        return {str(row["name"]): int(str(row["messages"])) for row in rows}

    # ------------------------------------------------------------------ orphans

    @classmethod
    def reap_orphans(cls) -> list[Path]:
        """Kill and delete private nodes whose owning process died without cleanup.

        Only touches ``amqpagents-broker-*`` temp dirs whose recorded owner process is
        gone, and only kills pids that /proc shows to be that dir's own VM or epmd.
        Returns the dirs removed.
        """
        removed: list[Path] = []
        for workdir in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
            try:
                owner = json.loads((workdir / "owner.json").read_text())
            except (OSError, ValueError):
                continue
            owner_start = _process_start_ticks(int(owner.get("owner_pid", 0)))
            if owner_start is not None and owner_start == owner.get("owner_start"):
                continue  # its owner is alive (same pid, same start time: not a reuse)
            for pid in _orphan_pids(workdir, owner):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(workdir)
        return removed


def _orphan_pids(workdir: Path, owner: dict[str, object]) -> Iterator[int]:
    node = str(owner.get("node", ""))
    with contextlib.suppress(OSError, ValueError):
        pid = int((workdir / "rabbit.pid").read_text().strip())
        env = _process_environ(pid)
        if node and env is not None and env.get("RABBITMQ_NODENAME") == node:
            yield pid
    epmd_pid = owner.get("epmd_pid")
    if isinstance(epmd_pid, int):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{epmd_pid}/cmdline").read_bytes().split(b"\0")
            if cmdline[0].endswith(b"epmd") and str(owner.get("epmd_port")).encode() in cmdline:
                yield epmd_pid
