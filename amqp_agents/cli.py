"""The ``amqp-agents`` command line: the parser of every command, and how it ends.

Every command has ``--help``. Errors are one line on stderr and exit status 1 (usage
errors: status 2), never a traceback (``--debug`` shows it). A configuration with
several problems reports one line per problem, each naming its place. Every command
takes ``--config`` and finds its broker and namespace by one rule
(:mod:`amqp_agents.commands.options`).

    demo | send | history            talk to a broker from the shell
    cancel TASK_ID | agents          cancel a task; list the agents and their cards
    run CONFIG [--agent ID ...]      run the configured agents until SIGTERM/SIGINT
    topology plan|apply|graph CONFIG what the namespace needs; create it; draw it
    topology delete CONFIG_OR_NS     delete a namespace, after showing what it holds
    routes explain CONFIG ...        which routes take a message, and where it goes

The console script enters through :mod:`amqp_agents_cli`, which keeps a Ctrl-C during
the imports quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .commands import history, messages, options, routes, tasks, topology
from .commands.messages import format_timeline
from .errors import AgentsError

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

__all__ = ["build_parser", "format_timeline", "main", "parse_args"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = options.Parser(
        prog="amqp-agents", description="Agents that talk to each other through RabbitMQ."
    )
    parser.add_argument("--debug", action="store_true", help="log debug lines, show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    messages.add_parsers(sub)
    history.add_parsers(sub)
    tasks.add_parsers(sub)
    topology.add_parsers(sub)
    routes.add_parsers(sub)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; exits 2 with one line on a usage error."""
    args = build_parser().parse_args(argv)
    options.resolve_config_argument(args.parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        # The client libraries log connection failures that we report as one line.
        for noisy in ("aiormq", "aio_pika"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    command: Command = args.func
    try:
        return asyncio.run(command(args))
    except AgentsError as exc:
        if args.debug:
            raise
        # A configuration error lists one problem per line, each naming its place.
        for line in str(exc).splitlines() or [type(exc).__name__]:
            options.fail(line)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``amqp-agents history ... | head``): not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
