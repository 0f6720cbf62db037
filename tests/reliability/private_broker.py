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
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from broker_admin import BrokerAdmin
from host_probe import (
    UNPREFIXED_RABBIT_VARS,
    BrokerError,
    epmd_names,
    find_epmd,
    find_scripts_dir,
    is_beam_of,
    pick_ports,
    port_accepts,
    process_alive,
    process_start_ticks,
    reap_orphan_nodes,
    tail,
)

__all__ = ["BrokerError", "PrivateBroker"]

#: Prefix of every temp dir this module makes; :meth:`PrivateBroker.reap_orphans` looks
#: for it.
WORKDIR_PREFIX = "amqpagents-broker-"


class PrivateBroker(BrokerAdmin):
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

        For a private cluster (cluster.py): ``epmd_port`` of the epmd the nodes share
        (None: a port of our own), ``own_epmd`` to start it here (default: when
        ``epmd_port`` is None), the shared ``cookie`` (None: a random one),
        ``extra_conf`` lines for rabbitmq.conf, the ``ip`` every listener of the node
        uses, ``node_host`` (an IP address makes a long node name), ``netns`` to run
        node, epmd and rabbitmqctl in that network namespace (netns.py), and
        ``net_ticktime_s`` (how soon a silent peer is declared down; Erlang: 60 s).
        """
        if consumer_timeout_ms is not None and consumer_timeout_ms <= 0:
            raise ValueError("consumer_timeout_ms must be positive (or None to disable)")
        self.consumer_timeout_ms = consumer_timeout_ms
        self.channel_tick_interval_ms = channel_tick_interval_ms
        self.disk_free_limit = disk_free_limit
        self.start_timeout = start_timeout
        self._scripts = find_scripts_dir()  # before mkdtemp: fail without leaving a dir
        self._epmd_binary = find_epmd()
        self.node = f"{node_prefix}-{secrets.token_hex(4)}@{node_host}"
        self.ip = ip
        self.netns = netns
        self.long_name = "." in node_host or ":" in node_host
        self.amqp_port, self.dist_port, own_epmd_port = pick_ports(3)
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
                    "owner_start": process_start_ticks(os.getpid()),
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
            if not key.startswith(("RABBITMQ_", "ERL_")) and key not in UNPREFIXED_RABBIT_VARS
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
            while epmd_names(self.ip, self.epmd_port) is None:
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
        while epmd_names(self.ip, self.epmd_port) is None:
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
                if ctl.returncode == 0 and port_accepts(self.ip, self.amqp_port):
                    return
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=0.05)

    def _failure(self, what: str) -> BrokerError:
        return BrokerError(f"private RabbitMQ {self.node} {what}.\n{self.log_tail()}")

    def _wait_name_released(self, deadline: float) -> None:
        """After a kill, wait until epmd has dropped the old registration."""
        short = self.node.partition("@")[0]
        while short in (epmd_names(self.ip, self.epmd_port) or set()):
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
        while process_alive(pid):
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
        if not is_beam_of(pid, self.node):
            raise BrokerError(f"pid {pid} in {self.pid_file} is not {self.node}'s VM")
        return pid

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
            f"--- {self.startup_log} ---\n{tail(self.startup_log, lines)}\n"
            f"--- {self.log_file} ---\n{tail(self.log_file, lines)}"
        )

    # ------------------------------------------------------------------ orphans

    @classmethod
    def reap_orphans(cls) -> list[Path]:
        """Kill and delete private nodes whose owning process died without cleanup
        (see :func:`host_probe.reap_orphan_nodes`); returns the dirs removed."""
        return reap_orphan_nodes(WORKDIR_PREFIX)
