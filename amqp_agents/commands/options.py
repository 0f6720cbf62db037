"""What every command shares: argument types that refuse bad values in one line, and one
rule for where the broker and the namespace come from.

The rule, the same for every command::

    configuration  --config FILE (or the command's CONFIG argument), if given
    url            --url, else the file's broker.url, else $AMQP_URL, else the local broker
    namespace      --namespace, else the file's broker.namespace, else $AMQP_NAMESPACE,
                   else "agents"
    queue type     --queue-type, else the file's broker.queue_type, else $AMQP_QUEUE_TYPE,
                   else quorum (every process of a namespace must use the same)
    history        --history, else the file's broker.history, else $AMQP_HISTORY, else
                   stream (every process of a namespace must use the same)

The example configuration reads ``${AMQP_URL}`` and ``${AMQP_NAMESPACE}`` itself, so
``send`` without a file lands in the namespace that ``run FILE`` serves.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

from pydantic import SecretStr

from amqp_agents import runner
from amqp_agents.config import AgentsConfig, load_config
from amqp_agents.connection import redact_url
from amqp_agents.errors import InvalidMessageError, TopologyError
from amqp_agents.message import MessagePriority, validate_agent_id
from amqp_agents.queue import MessageQueue
from amqp_agents.wire import (
    DEFAULT_HISTORY,
    DEFAULT_QUEUE_TYPE,
    HISTORY_MODES,
    QUEUE_TYPES,
    validate_namespace,
)

DEFAULT_NAMESPACE = "agents"
NAMESPACE_VARIABLE = "AMQP_NAMESPACE"
"""The variable the example configuration and every command read the namespace from."""
QUEUE_TYPE_VARIABLE = "AMQP_QUEUE_TYPE"
"""The queue type of a command given no configuration file (none: quorum)."""
HISTORY_VARIABLE = "AMQP_HISTORY"
"""The history mode of a command given no configuration file (none: stream)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line that points at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """End the command as a usage error of its own parser (exit status 2)."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def fail(message: str) -> int:
    """Print ``error: message`` on stderr, as every failed command does; returns 1."""
    print(f"error: {message}", file=sys.stderr)
    return 1


# -- argument types: each refuses a bad value with one line --------------------------------


def agent_id(text: str) -> str:
    """An agent id (``researcher``, ``writer-2``)."""
    try:
        return validate_agent_id(text)
    except InvalidMessageError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an agent id: a letter, then up to 63 letters, digits, '_' or '-'"
        ) from None


def namespace(text: str) -> str:
    """A namespace (the prefix of every exchange and queue name)."""
    try:
        return validate_namespace(text)
    except InvalidMessageError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a namespace: letters, digits, '.', '_' or '-', not starting"
            " with 'amq.'"
        ) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds")
    return value


def positive_seconds(text: str) -> float:
    """Seconds greater than zero (a timeout)."""
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def non_negative_seconds(text: str) -> float:
    """Seconds, zero allowed (0: do not wait)."""
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more, not {text}")
    return value


PRIORITY_CHOICES = [
    *(p.name.lower() for p in MessagePriority),
    *(str(int(p)) for p in MessagePriority),
]


def priority(text: str) -> MessagePriority:
    """A priority by name (``low`` .. ``urgent``) or number (1-4)."""
    for p in MessagePriority:
        if text.lower() in (p.name.lower(), str(int(p))):
            return p
    raise argparse.ArgumentTypeError(f"{text!r} is not a priority: {', '.join(PRIORITY_CHOICES)}")


def add_priority_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--priority",
        type=priority,
        default=MessagePriority.NORMAL,
        metavar="P",
        help="low, normal, high, urgent or 1-4 (default: normal)",
    )


# -- the configuration and the broker ---------------------------------------------------


def add_config_option(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``--config FILE``; when ``required``, also a positional ``CONFIG``."""
    if required:
        parser.add_argument(
            "config_file", nargs="?", metavar="CONFIG", help="the YAML configuration file"
        )
        parser.set_defaults(config_required=True)
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the YAML configuration file"
        + (" (instead of CONFIG)" if required else ": its broker section is used"),
    )


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--namespace``; they override the configuration file's."""
    parser.add_argument(
        "--url",
        help="broker URL, e.g. amqp://user:pass@host:5672/vhost (default: the file's,"
        " else $AMQP_URL, else amqp://guest:guest@localhost:5672/)",
    )
    parser.add_argument(
        "--namespace",
        type=namespace,
        help="prefix of the exchange and queue names (default: the file's,"
        f" else ${NAMESPACE_VARIABLE}, else {DEFAULT_NAMESPACE})",
    )
    add_queue_type_option(parser)
    add_history_option(parser)
    parser.add_argument(
        "--senders",
        action="append",
        type=sender_entry,
        default=[],
        metavar="USER=ID[,ID...]",
        help="a RabbitMQ user and the agents it may speak for, added to the file's"
        " broker.senders (repeatable; default: none)",
    )


def add_queue_type_option(parser: argparse.ArgumentParser) -> None:
    """``--queue-type``: it overrides the configuration file's ``broker.queue_type``."""
    parser.add_argument(
        "--queue-type",
        choices=QUEUE_TYPES,
        help="quorum (replicated; for a cluster) or classic (a single node); every process"
        f" of a namespace must use the same (default: the file's, else ${QUEUE_TYPE_VARIABLE},"
        f" else {DEFAULT_QUEUE_TYPE})",
    )


def add_history_option(parser: argparse.ArgumentParser) -> None:
    """``--history``: it overrides the configuration file's ``broker.history``."""
    parser.add_argument(
        "--history",
        choices=HISTORY_MODES,
        help="stream (keep every message in {ns}.history) or off (no stream; history"
        " queries fail); every process of a namespace must use the same (default: the"
        f" file's, else ${HISTORY_VARIABLE}, else {DEFAULT_HISTORY})",
    )


def sender_entry(text: str) -> tuple[str, list[str]]:
    """``svc=researcher,writer`` -> ``("svc", ["researcher", "writer"])``."""
    user, _, ids = text.partition("=")
    if not user or not ids:
        raise argparse.ArgumentTypeError(f"expected USER=ID[,ID...], not {text!r}")
    return user, [agent_id(one) for one in ids.split(",")]


def senders_of(args: argparse.Namespace, config: AgentsConfig | None) -> dict[str, list[str]]:
    """Who may speak for whom: the file's ``broker.senders`` plus ``--senders``."""
    senders = {user: list(ids) for user, ids in (config.broker.senders if config else {}).items()}
    for user, ids in getattr(args, "senders", []):
        senders.setdefault(user, []).extend(ids)
    return senders


def resolve_config_argument(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Merge ``CONFIG`` and ``--config`` into ``args.config`` (a usage error if neither)."""
    positional = getattr(args, "config_file", None)
    option = getattr(args, "config", None)
    if positional and option and positional != option:
        parser.error(f"CONFIG {positional!r} and --config {option!r} disagree; give one")
    args.config = option or positional
    if getattr(args, "config_required", False) and not args.config:
        parser.error("the following arguments are required: config (CONFIG or --config)")


def load(args: argparse.Namespace) -> AgentsConfig | None:
    """The configuration file of ``args`` with ``--url``, ``--namespace``,
    ``--queue-type`` and ``--history`` applied, or None.

    Raises:
        ConfigError: as :func:`~amqp_agents.config.load_config`.
    """
    if not getattr(args, "config", None):
        return None
    config = load_config(args.config)
    changes: dict[str, object] = {}
    if getattr(args, "url", None):
        changes["url"] = SecretStr(args.url)
    if getattr(args, "namespace", None):
        changes["namespace"] = args.namespace
    if getattr(args, "queue_type", None):
        changes["queue_type"] = args.queue_type
    if getattr(args, "history", None):
        changes["history"] = args.history
    if not changes:
        return config
    return config.model_copy(update={"broker": config.broker.model_copy(update=changes)})


def namespace_of(args: argparse.Namespace, config: AgentsConfig | None) -> str:
    """The namespace a command works in (see the module docstring)."""
    if args.namespace:
        return str(args.namespace)
    if config is not None:
        return config.broker.namespace
    return os.environ.get(NAMESPACE_VARIABLE) or DEFAULT_NAMESPACE


def message_queue(
    args: argparse.Namespace,
    *,
    passive: bool,
    namespace: str | None = None,
    reply_owner: str | None = None,
    routes: bool = True,
) -> MessageQueue:
    """The (unconnected) queue a command talks through, as the rule above says.

    ``passive``: only check that the namespace exists, never declare (read-only
    commands). ``namespace`` overrides the rule (the demo's own namespace). ``routes``:
    route as the file says (False: the demo, whose agents are not the file's).
    """
    config = load(args)
    name = f"amqp-agents {args.command}"
    ns = namespace or namespace_of(args, config)
    if config is None:
        return MessageQueue(
            args.url,
            namespace=ns,
            passive=passive,
            connection_name=name,
            reply_owner=reply_owner,
            senders=senders_of(args, None),
            queue_type=getattr(args, "queue_type", None)
            or os.environ.get(QUEUE_TYPE_VARIABLE)
            or DEFAULT_QUEUE_TYPE,
            history=getattr(args, "history", None)
            or os.environ.get(HISTORY_VARIABLE)
            or DEFAULT_HISTORY,
        )
    broker = config.broker.model_copy(
        update={"passive": passive, "namespace": ns, "senders": senders_of(args, config)}
    )
    config = config.model_copy(update={"broker": broker, **({} if routes else {"routes": ()})})
    return runner.queue_from_config(config, connection_name=name, reply_owner=reply_owner)


@asynccontextmanager
async def existing_namespace(queue: MessageQueue) -> AsyncIterator[MessageQueue]:
    """``queue`` (passive) connected; a missing namespace is one line saying where its
    name came from, instead of naming the first missing exchange.

    Raises:
        TopologyError: the namespace does not exist on the broker.
    """
    try:
        await queue.connect()
    except TopologyError as exc:
        if f"exchange {queue.namespace!r} does not exist" not in str(exc):
            raise  # the namespace exists, something in it is missing: that error says what
        raise TopologyError(
            f"namespace {queue.namespace!r} does not exist on {redact_url(queue.url)}"
            f" (it comes from --namespace, else the --config file, else ${NAMESPACE_VARIABLE});"
            " create it with `amqp-agents topology apply CONFIG`"
        ) from exc
    try:
        yield queue
    finally:
        await queue.close()
