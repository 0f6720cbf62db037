"""``routes explain``: which routes take a message without recipient, and where it goes.

No broker: the routes are evaluated (filters included) as a broker client given these routes would.
"""

from __future__ import annotations

import argparse
import json

from amqp_agents import wire
from amqp_agents.config import build_router
from amqp_agents.errors import ConfigError
from amqp_agents.message import Message, MessageType

from . import options


def _content(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def cmd_routes_explain(args: argparse.Namespace) -> int:
    """Show which routes take a message without recipient, and where it goes."""
    config = options.load(args)
    assert config is not None, "resolve_config_argument makes CONFIG required"
    if not config.routes:
        print("the file has no routes: a message without recipient goes nowhere")
        return 0
    router = build_router(config)
    try:
        metadata = json.loads(args.metadata)
    except ValueError as exc:
        raise ConfigError(f"--metadata is not JSON: {exc}") from None
    message = Message(
        sender=args.sender or "",
        type=MessageType(args.type),
        priority=args.priority,
        content=_content(args.content),
        metadata=metadata if isinstance(metadata, dict) else {},
    )
    print(
        f"{message.type.value} from {message.sender or '(unknown sender)'},"
        f" priority {int(message.priority)} ({message.priority.name.lower()}),"
        f" no recipient: routing key {wire.routing_key(message)}"
    )
    verdicts = router.explain(message)
    for i, verdict in enumerate(verdicts):
        route = config.routes[i]
        if not verdict.matches:
            outcome = "no match"
        elif verdict.filter_error:
            outcome = f"match, but filter {route.filter} raised {verdict.filter_error}"
        elif verdict.filtered_out:
            outcome = f"match, filtered out by {route.filter}"
        else:
            kept = f", kept by {route.filter}" if route.filter else ""
            changed = f", transformed by {route.transform}" if route.transform else ""
            outcome = f"match{kept}{changed} -> {', '.join(verdict.destinations)}"
        print(f"  routes[{i}]  {verdict.pattern:<20} {outcome}")
    # As get_destinations: route order, then destination order, each agent once.
    destinations = list(dict.fromkeys(d for v in verdicts if v.takes for d in v.destinations))
    if any(v.filter_error for v in verdicts):
        print("goes to: unknown (a filter raised: sending it raises that error)")
    elif destinations:
        print(f"goes to: {', '.join(destinations)}")
    else:
        print("goes to: nobody (sending it raises NoRouteError)")
    return 0


def add_parsers(sub: argparse._SubParsersAction[options.Parser]) -> None:
    """Add ``routes explain``."""
    routes = sub.add_parser("routes", help="inspect a configuration's routes")
    rsub = routes.add_subparsers(dest="routes_command", required=True, metavar="ACTION")
    explain = rsub.add_parser(
        "explain",
        help="which routes take a message without recipient, and where it goes",
        description="Evaluate the routes (filters included) for a message without"
        " recipient; no broker needed.",
    )
    options.add_config_option(explain, required=True)
    explain.add_argument(
        "--type",
        default=MessageType.NOTIFICATION.value,
        choices=[t.value for t in MessageType],
        help="message type (default: %(default)s)",
    )
    explain.add_argument(
        "--sender",
        type=options.agent_id,
        metavar="ID",
        help="sender agent id (default: none)",
    )
    options.add_priority_option(explain)
    explain.add_argument(
        "--content", default="null", help="content for filters: JSON or text (default: null)"
    )
    explain.add_argument(
        "--metadata", default="{}", help="metadata for filters: a JSON object (default: {})"
    )
    explain.set_defaults(func=cmd_routes_explain, parser=explain)
