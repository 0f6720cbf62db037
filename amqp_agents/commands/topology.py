"""Commands on a configuration: ``run``, ``topology plan|apply|graph|delete``.

``plan``, ``apply`` and ``run`` import every agent class, filter and transform the file
names before they touch the broker, so a file that ``run`` would refuse is refused by
``plan`` too; ``--path DIR`` puts a directory of such modules on the import path.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection

from amqp_agents import logs, runner
from amqp_agents.config import AgentsConfig, build_router
from amqp_agents.connection import connect, redact_url, resolve_url
from amqp_agents.diagram import mermaid
from amqp_agents.errors import ConfigError
from amqp_agents.layout import layout_of
from amqp_agents.plan import Plan, Step, plan
from amqp_agents.topology import apply_layout, inspect_layout

from . import options
from .namespace import Found, find_namespace, remove

IMPORT_HINT = "add the module's directory with --path DIR (or PYTHONPATH)"


def _config(args: argparse.Namespace) -> AgentsConfig:
    """The command's configuration, its modules importable from ``--path``."""
    for directory in reversed(getattr(args, "path", None) or []):
        sys.path.insert(0, str(Path(directory).resolve()))
    config = options.load(args)
    assert config is not None, "resolve_config_argument makes CONFIG required"
    return config


def check_imports(config: AgentsConfig) -> None:
    """Import every agent class, filter and transform, as ``run`` will.

    Raises:
        ConfigError: naming the file, line and field; a module that is not found gets
            a hint about ``--path``.
    """
    try:
        for index in range(len(config.agents)):
            runner.agent_class(config, index)
        build_router(config)
    except ConfigError as exc:
        raise with_import_hint(exc) from exc.__cause__


def with_import_hint(exc: ConfigError) -> ConfigError:
    """``exc``, with the ``--path`` hint when a module was not found."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ModuleNotFoundError):
        cause = cause.__cause__
    return exc if cause is None else ConfigError(f"{exc} ({IMPORT_HINT})")


async def cmd_run(args: argparse.Namespace) -> int:
    """Run the configured agents until SIGTERM/SIGINT, then drain and exit 0."""
    logging.getLogger(runner.__name__).setLevel(logging.INFO)
    config = with_observability_options(_config(args), args)
    logs.use_format(config.observability.log_format)
    try:
        await runner.run(config, args.agent or (), drain_timeout_s=args.drain_timeout)
    except ConfigError as exc:
        raise with_import_hint(exc) from exc.__cause__
    return 0


def with_observability_options(config: AgentsConfig, args: argparse.Namespace) -> AgentsConfig:
    """``config`` with the command line's ``--metrics-port``, ``--metrics-host`` and
    ``--log-format`` over the file's ``observability`` section."""
    given = {
        key: value
        for key in ("metrics_port", "metrics_host", "log_format")
        if (value := getattr(args, key, None)) is not None
    }
    if not given:
        return config
    observability = config.observability.model_copy(update=given)
    return config.model_copy(update={"observability": observability})


async def _plan(config: AgentsConfig, connection: AbstractRobustConnection) -> Plan:
    """Inspect the broker on ``connection`` and plan the configuration's layout."""
    layout = layout_of(config)
    print(
        f"namespace {layout.namespace!r} on {redact_url(resolve_url(config.broker.secret_url()))}",
        flush=True,
    )
    return plan(layout, await inspect_layout(connection, layout, progress=_progress))


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        end = "\n" if done == total else ""
        print(f"\rchecking {done}/{total} exchanges and queues", end=end, file=sys.stderr)


def _describe(step: Step) -> str:
    if step.action == "conflict":
        return f"CONFLICT {step.kind} {step.name}: {step.detail}"
    what = step.name if step.kind == "binding" else f"{step.kind} {step.name}"
    return f"{step.action:<8} {what}  ({step.detail})"


def _queue_type_notes(config: AgentsConfig, the_plan: Plan) -> list[str]:
    """What the plan says about the queue type: classic is for one node; queues found
    of the other type."""
    notes = []
    if config.broker.queue_type == "classic":
        notes.append(
            "note: queue_type classic: classic queues live on one node; on a cluster a"
            " message confirmed into an inbox whose node fails is lost. Use quorum there"
            " (docs/deploy.md, Running on a cluster)."
        )
    if mismatched := the_plan.other_queue_type:
        names = ", ".join(step.name for step in mismatched[:3])
        more = f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else ""
        notes.append(
            f"note: {names}{more} exist with another queue type than this configuration's"
            f" {config.broker.queue_type}: docs/deploy.md says how to move a namespace"
            " from classic to quorum."
        )
    return notes


def _summary(the_plan: Plan) -> str:
    layout = the_plan.layout
    return (
        f"{len(layout.exchanges)} exchanges, {len(layout.queues)} queues and"
        f" {len(layout.bindings)} bindings exist as configured"
    )


async def cmd_topology_plan(args: argparse.Namespace) -> int:
    """Show what `topology apply` would create and what conflicts; exit 2 on conflicts."""
    config = _config(args)
    check_imports(config)
    async with runner.broker_connection(config, "amqp-agents topology plan") as connection:
        the_plan = await _plan(config, connection)
    for step in the_plan.steps:
        print(_describe(step))
    for line in _queue_type_notes(config, the_plan):
        print(line)
    if the_plan.nothing_to_do:
        print(f"nothing to do: {_summary(the_plan)}")
        return 0
    creates = sum(1 for s in the_plan.steps if s.action == "create")
    binds = sum(1 for s in the_plan.steps if s.action == "bind")
    conflicts = len(the_plan.conflicts)
    print(f"plan: {creates} to create, {binds} to bind, {conflicts} conflict(s)")
    return 2 if conflicts else 0


async def cmd_topology_apply(args: argparse.Namespace) -> int:
    """Declare what the configuration needs; idempotent."""
    config = _config(args)
    check_imports(config)
    async with runner.broker_connection(config, "amqp-agents topology apply") as connection:
        the_plan = await _plan(config, connection)
        total = len(the_plan.changes)
        done = 0

        def on_step(step: Step) -> None:
            nonlocal done
            done += 1
            what = "bound" if step.kind == "binding" else f"created {step.kind}"
            print(f"[{done}/{total}] {what} {step.name}  ({step.detail})", flush=True)

        await apply_layout(connection, the_plan, on_step=on_step)
    if total == 0:
        print(f"nothing to do: {_summary(the_plan)}")
    else:
        print(f"applied: {total} change(s); {_summary(the_plan)}")
    return 0


async def cmd_topology_graph(args: argparse.Namespace) -> int:
    """Print the configuration as a Mermaid flowchart."""
    print(mermaid(_config(args)), end="")
    return 0


async def cmd_topology_delete(args: argparse.Namespace) -> int:
    """Show what a namespace has on the broker, and delete it once confirmed.

    The connection is closed while the question waits for an answer, so a slow answer
    cannot outlive its heartbeats, and a Ctrl-C there ends at once.
    """
    if bool(args.target) == bool(args.config):
        options.usage_error(args, "give CONFIG_OR_NAMESPACE or --config FILE (one of them)")
    target: str = args.target or args.config
    is_file = bool(args.config) or _is_config_file(target)
    if is_file:
        args.config = target
        config = options.load(args)
        assert config is not None
        url, namespace = resolve_url(config.broker.secret_url()), config.broker.namespace
        ssl_context, timeout_s = runner.ssl_context_of(config), config.broker.connect_timeout_s
        layout = layout_of(config)
    else:
        try:
            namespace = options.namespace(target)
        except argparse.ArgumentTypeError as exc:
            options.usage_error(args, str(exc))
        url, ssl_context, timeout_s, layout = resolve_url(args.url), None, 10.0, None

    async def connected() -> AbstractRobustConnection:
        name = "amqp-agents topology delete"
        return await connect(url, name=name, timeout_s=timeout_s, ssl_context=ssl_context)

    connection = await connected()
    try:
        found = await find_namespace(connection, namespace, layout)
    finally:
        await connection.close()
    print(f"namespace {namespace!r} on {redact_url(url)}:")
    if not found.exchanges and not found.queues:
        print("nothing to delete: none of its exchanges and queues exist")
        return 0
    _show(found, from_file=is_file)
    if not args.yes and not _confirmed(found):
        print("nothing deleted")
        return 1
    connection = await connected()
    try:
        await remove(connection, found)
    finally:
        await connection.close()
    print(f"deleted {len(found.queues)} queue(s) and {len(found.exchanges)} exchange(s)")
    return 0


def _is_config_file(target: str) -> bool:
    return Path(target).is_file() or target.endswith((".yaml", ".yml"))


def _show(found: Found, *, from_file: bool) -> None:
    for name in found.exchanges:
        print(f"  exchange {name}")
    for queue in found.queues:
        busy = f", {queue.consumers} consumer(s)" if queue.consumers else ""
        print(f"  queue    {queue.name}  ({queue.messages} message(s){busy})")
    if not from_file:
        print(
            "  (inboxes that `topology apply` did not record are not found by name alone:"
            " give the configuration file to delete those too)"
        )


def _confirmed(found: Found) -> bool:
    """Ask on stdin; anything but y/yes (EOF included) is no."""
    messages = sum(q.messages for q in found.queues)
    question = (
        f"delete these {len(found.queues)} queue(s) with {messages} message(s) and"
        f" {len(found.exchanges)} exchange(s)? [y/N] "
    )
    print(question, end="", flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


# -- parsers ----------------------------------------------------------------------------


def _add_path_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path",
        action="append",
        metavar="DIR",
        help="import agent classes, filters and transforms also from DIR (repeatable)",
    )


def port_number(text: str) -> int:
    """A TCP port, 0..65535 (argparse type)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return port


def add_parsers(sub: argparse._SubParsersAction[options.Parser]) -> None:
    """Add ``run`` and ``topology``."""
    run = sub.add_parser(
        "run",
        help="run the agents of a configuration until SIGTERM/SIGINT",
        description="Run the configured agents as consumers in one process. SIGTERM or"
        " SIGINT stops them gracefully: no new deliveries, in-flight handlers finish"
        " (up to --drain-timeout), exit status 0. A second signal cancels what still runs.",
    )
    options.add_config_option(run, required=True)
    options.add_broker_options(run)
    _add_path_option(run)
    run.add_argument(
        "--agent",
        action="append",
        type=options.agent_id,
        metavar="ID",
        help="run only this agent (repeatable; default: every agent in the file)",
    )
    run.add_argument(
        "--drain-timeout",
        type=options.non_negative_seconds,
        default=runner.DEFAULT_DRAIN_TIMEOUT_S,
        metavar="S",
        help="seconds in-flight handlers get to finish at stop (default: %(default)s)",
    )
    run.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on PORT (0: any free port, logged);"
        " overrides observability.metrics_port",
    )
    run.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="the address the probes listen on (default: all)",
    )
    run.add_argument(
        "--log-format",
        choices=logs.LOG_FORMATS,
        help="text, or json: one object per line with message id, conversation id, agent"
        " and trace id (default: observability.log_format, else text)",
    )
    run.set_defaults(func=cmd_run, parser=run)

    topology = sub.add_parser("topology", help="plan, apply, draw or delete a namespace")
    tsub = topology.add_subparsers(dest="topology_command", required=True, metavar="ACTION")
    for name, func, text in (
        (
            "plan",
            cmd_topology_plan,
            "show what `apply` would create, and what exists with other arguments"
            " (exit status 2 when something conflicts); checks that the agent classes,"
            " filters and transforms import",
        ),
        (
            "apply",
            cmd_topology_apply,
            "declare the exchanges, inboxes, retry, dead-letter and history queues and"
            " route bindings the configuration needs (idempotent; never deletes)",
        ),
        ("graph", cmd_topology_graph, "print a Mermaid flowchart of agents, routes and queues"),
    ):
        action = tsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        options.add_config_option(action, required=True)
        if name != "graph":
            options.add_broker_options(action)
            _add_path_option(action)
        else:
            options.add_queue_type_option(action)
            options.add_history_option(action)
        action.set_defaults(func=func, parser=action)

    delete = tsub.add_parser(
        "delete",
        help="delete a namespace's exchanges and queues, messages included",
        description="Show which exchanges and queues of a namespace exist (with their"
        " message counts), ask, and delete them. CONFIG_OR_NAMESPACE is a configuration"
        " file (everything its layout names) or a bare namespace (its fixed names and the"
        " inboxes `topology apply` recorded).",
    )
    delete.add_argument(
        "target",
        nargs="?",
        metavar="CONFIG_OR_NAMESPACE",
        help="a configuration file, or a namespace",
    )
    options.add_config_option(delete, required=False)
    options.add_broker_options(delete)
    delete.add_argument("--yes", action="store_true", help="delete without asking")
    delete.set_defaults(func=cmd_topology_delete, parser=delete)
