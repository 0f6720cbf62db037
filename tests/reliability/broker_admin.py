"""rabbitmqctl against one private node, and the commands fault-injection tests use:
users and permissions, resource alarms, consumer timeouts, stopping the app, closing
connections.

RabbitMQ 3.10 facts these rely on (checked against the 3.10.8 beams):

* ``consumer_timeout`` (ms, rabbitmq.conf) is read once when a channel opens; the
  check runs on the channel's ``tick``, every ``channel_tick_interval`` ms (default
  60000, settable only in advanced.config). So a timeout fires between
  ``consumer_timeout`` and ``consumer_timeout + channel_tick_interval`` after the
  oldest unacked delivery, and closes the channel with 406 PRECONDITION_FAILED.
* ``rabbitmqctl set_disk_free_limit`` re-checks the disk at once, so the alarm is
  raised (or cleared) right away.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from host_probe import BrokerError

__all__ = ["BrokerAdmin"]


class BrokerAdmin:
    """Mixed into :class:`private_broker.PrivateBroker`, which provides the node's name,
    scripts directory, environment and namespace prefix."""

    node: str
    long_name: bool
    disk_free_limit: str
    _scripts: Path

    def _env(self) -> dict[str, str]:
        raise NotImplementedError

    def _argv(self, *argv: str) -> list[str]:
        raise NotImplementedError

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
