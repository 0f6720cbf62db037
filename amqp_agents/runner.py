"""Running the agents of a configuration in one process (``amqp-agents run CONFIG``).

One read from top to bottom::

    prepare(config, agent_ids)   select agents, import their classes, build the queue
                                 and the agents: every configuration error surfaces
                                 here, before anything connects
    AgentRunner.start()          (passive: check the topology exists) connect, start
                                 each agent, one log line per agent
    AgentRunner.stop()           stop consuming, drain in-flight handlers (bounded by
                                 the drain timeout), close the connection
    run(config, ...)             start, wait for SIGTERM/SIGINT, stop

All agents share one connection (one MessageQueue): a RoutingMessageQueue when the
file has routes, so routed messages are filtered and transformed as configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import instrumentation, wire
from .agent import MessagePassingAgent
from .config import AgentConfig, AgentsConfig, build_router, import_object
from .connection import AgentConnection, connect, redact_url, resolve_url, tls_context
from .errors import BrokerConnectionError, ConfigError, TopologyError
from .history_reader import require_postgres
from .layout import layout_of
from .plan import Status
from .probes import ConnectionHealth, ProbeServer, readiness
from .queue import MessageQueue
from .routed_queue import RoutingMessageQueue
from .topology import inspect_layout

log = logging.getLogger(__name__)

DEFAULT_DRAIN_TIMEOUT_S = 30.0
"""How long a stop lets in-flight handlers finish before cancelling them."""


@dataclass(slots=True)
class AgentRunner:
    """The agents of one configuration, on one shared MessageQueue.

    Build it with :func:`prepare`; :meth:`start` and :meth:`stop` bracket the run.
    """

    config: AgentsConfig
    queue: MessageQueue
    agents: list[MessagePassingAgent]
    indexer: asyncio.Task[None] | None = None
    """The history indexer, run here when the file names a database (``history.db``)."""

    async def start(self) -> None:
        """Connect and start consuming every agent's inbox; one log line per agent.

        Raises:
            TopologyError: passive mode and the topology is incomplete (every missing
                name is listed), or a queue exists with other arguments.
            BrokerConnectionError: the broker cannot be reached or refused us.
        """
        if self.queue.passive:
            await check_topology(self.config, self.queue)
        await self.queue.connect()
        try:
            self.indexer = start_indexer(self.config, self.queue)
            for agent in self.agents:
                await agent.start_consuming()
                log.info(
                    "agent %s started: %s, concurrency %d, inbox %s",
                    agent.id,
                    type(agent).__name__,
                    agent.concurrency,
                    wire.inbox_name(self.queue.namespace, agent.id),
                )
        except BaseException:
            await self.stop()
            raise
        log.info(
            "%d agent(s) running in namespace %r on %s; stop with SIGTERM or Ctrl-C",
            len(self.agents),
            self.queue.namespace,
            redact_url(self.queue.url),
        )

    async def stop(self) -> None:
        """Stop every agent at once (each drains its handlers), then disconnect."""
        try:
            await asyncio.gather(*(agent.stop() for agent in self.agents))
        finally:
            indexer, self.indexer = self.indexer, None
            if indexer is not None:
                indexer.cancel()
                await asyncio.gather(indexer, return_exceptions=True)
            await self.queue.close()
        log.info("all agents stopped")


def start_indexer(config: AgentsConfig, queue: MessageQueue) -> asyncio.Task[None] | None:
    """Run the history indexer of the namespace as a task, when the file names a database.

    Every ``run`` of the file starts one; an advisory lock lets one of them write and
    keeps the others waiting as standbys (history_indexer.py).
    """
    dsn = config.history.secret_db()
    if dsn is None:
        return None
    from .history_indexer import HistoryIndexer  # the postgres extra: checked by prepare()

    log.info("history indexer of %r running in this process", queue.namespace)
    return asyncio.create_task(HistoryIndexer(queue.url, queue.namespace, dsn).run())


def prepare(
    config: AgentsConfig,
    agent_ids: Sequence[str] = (),
    *,
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
) -> AgentRunner:
    """Import, build and check everything a run needs, without connecting.

    Args:
        config: the loaded configuration.
        agent_ids: the agents to run (empty: all of ``config.agents``).
        drain_timeout_s: how long stopping lets each agent's running handlers finish.

    Raises:
        ConfigError: an unknown agent id, a class that cannot be imported or is no
            MessagePassingAgent, an unusable filter/transform or TLS file; the message
            names the file, line and field.
    """
    selected = select_agents(config, agent_ids)
    if config.history.db is not None:
        require_postgres(config.where("history", "db"))  # run starts the indexer
    classes = [(i, agent, agent_class(config, i)) for i, agent in selected]
    queue = queue_from_config(
        config,
        connection_name=f"amqp-agents run {','.join(a.id for _, a in selected)} pid={os.getpid()}",
        reply_owner=selected[0][1].id if len(selected) == 1 else None,
    )
    agents = [
        build_agent(config, i, agent, cls, queue, drain_timeout_s) for i, agent, cls in classes
    ]
    return AgentRunner(config, queue, agents)


async def run(
    config: AgentsConfig,
    agent_ids: Sequence[str] = (),
    *,
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the agents until SIGTERM or SIGINT (or ``stop`` is set), then drain and return.

    A second signal while draining cancels the handlers still running; their messages
    are not acknowledged, so the broker hands them out again.

    Raises:
        ConfigError, TopologyError, BrokerConnectionError: as :func:`prepare` and
            :meth:`AgentRunner.start`; BrokerConnectionError also when, running, the
            broker kept refusing our credentials (a deleted user): the agents are
            stopped and drained first.
    """
    runner = prepare(config, agent_ids, drain_timeout_s=drain_timeout_s)
    observe(config)
    probes: ProbeServer | None = None
    stop = stop or asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: cancelling the handlers still running", signum.name)
            force.set()
            return
        log.info(
            "%s received: stopping %d agent(s), draining in-flight handlers (up to %gs)",
            signum.name,
            len(runner.agents),
            drain_timeout_s,
        )
        stop.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await runner.start()
        try:
            probes = await serve_probes(config, runner)
        except BaseException:
            await runner.stop()
            raise
        failure = await _stopped_or_failed(stop, runner.queue)
        stopping = asyncio.create_task(runner.stop())
        forced = asyncio.create_task(force.wait())
        await asyncio.wait({stopping, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not stopping.done():
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
            await runner.queue.close()
            log.warning("stopped without draining: unfinished messages return to their inboxes")
        else:
            stopping.result()
        if failure is not None:
            raise failure
    finally:
        if probes is not None:
            await probes.close()
        for signum in signals:
            loop.remove_signal_handler(signum)


def observe(config: AgentsConfig) -> None:
    """Switch on what ``observability`` asks for: metrics with probes (when the extra
    is installed), tracing (``auto``: when an OpenTelemetry SDK is configured), the
    log context of JSON lines.

    Raises:
        ConfigError: ``tracing: on`` without the extra ``otel``.
    """
    options = config.observability
    metrics = options.metrics_port is not None and instrumentation.metrics_installed()
    if options.metrics_port is not None and not metrics:
        log.warning("no /metrics: install the extra 'metrics' (prometheus-client)")
    tracing = options.tracing == "on" or (
        options.tracing == "auto" and instrumentation.tracer_configured()
    )
    instrumentation.instrument(
        tracing=tracing, metrics=metrics, log_context=options.log_format == "json"
    )


async def serve_probes(config: AgentsConfig, runner: AgentRunner) -> ProbeServer | None:
    """Start ``/metrics``, ``/healthz`` and ``/readyz`` if ``metrics_port`` is set.

    Raises:
        ConfigError: the port cannot be bound.
    """
    options = config.observability
    if options.metrics_port is None:
        return None
    health = ConnectionHealth(runner.queue.connection, options.reconnect_budget_s)
    server = ProbeServer(
        options.metrics_host, options.metrics_port, health.problem, readiness(runner.agents)
    )
    try:
        await server.start()
    except OSError as exc:
        where = config.where("observability", "metrics_port")
        raise ConfigError(
            f"{where}: cannot serve probes on port {options.metrics_port}: {exc}"
        ) from None
    log.info("probes on http://%s:%d (/metrics, /healthz, /readyz)", server.host, server.port)
    return server


async def _stopped_or_failed(
    stop: asyncio.Event, queue: MessageQueue
) -> BrokerConnectionError | None:
    """Wait for ``stop``, or until the queue stops reconnecting for good (returned)."""
    stopping = asyncio.ensure_future(stop.wait())
    failed = asyncio.ensure_future(queue.wait_failed())
    try:
        done, _ = await asyncio.wait({stopping, failed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        failed.cancel()
    if failed in done and stopping not in done:
        log.error("stopping every agent: %s", failed.result())
        return failed.result()
    return None


def select_agents(config: AgentsConfig, agent_ids: Iterable[str]) -> list[tuple[int, AgentConfig]]:
    """The agents to run with their index in the file, in file order.

    Raises:
        ConfigError: an id the file does not define, or a file without agents.
    """
    indexed = list(enumerate(config.agents))
    wanted = list(dict.fromkeys(agent_ids))
    known = {agent.id for agent in config.agents}
    if unknown := [agent_id for agent_id in wanted if agent_id not in known]:
        defined = ", ".join(sorted(known)) or "none"
        raise ConfigError(
            f"{config.where('agents')}: no agent {', '.join(map(repr, unknown))} in this "
            f"file (it defines: {defined})"
        )
    selected = [(i, a) for i, a in indexed if not wanted or a.id in wanted]
    if not selected:
        raise ConfigError(f"{config.where('agents')}: the file defines no agents to run")
    return selected


def agent_class(config: AgentsConfig, index: int) -> type[MessagePassingAgent]:
    """Import ``agents[index].class``; it must be a MessagePassingAgent subclass.

    Raises:
        ConfigError: naming the file, line and field.
    """
    place = config.where("agents", index, "class")
    path = config.agents[index].class_path
    try:
        cls = import_object(path)
    except ConfigError as exc:
        raise ConfigError(f"{place}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, MessagePassingAgent)):
        raise ConfigError(f"{place}: {path!r} is not a subclass of MessagePassingAgent")
    return cls


def build_agent(
    config: AgentsConfig,
    index: int,
    agent: AgentConfig,
    cls: type[MessagePassingAgent],
    queue: MessageQueue,
    drain_timeout_s: float,
) -> MessagePassingAgent:
    """Instantiate one configured agent on ``queue`` (not started).

    Raises:
        ConfigError: the configuration asks for what the runner cannot do, or the
            class's constructor refused the arguments.
    """
    if not agent.inbox.dead_letter:
        raise ConfigError(
            f"{config.where('agents', index, 'inbox', 'dead_letter')}: false is not supported"
            " by `run` yet: messages an agent gives up on always go to the dead letters"
        )
    try:
        built = cls(
            agent.id,
            queue,
            concurrency=agent.concurrency,
            retry=agent.retry,
            drain_timeout_s=drain_timeout_s,
        )
    except Exception as exc:
        raise ConfigError(
            f"{config.where('agents', index, 'class')}: cannot create {agent.class_path}"
            f" for agent {agent.id!r}: {type(exc).__name__}: {exc}"
        ) from exc
    built.card = built.card.model_copy(update=agent.card_fields())  # the file's word wins
    return built


def ssl_context_of(config: AgentsConfig) -> ssl.SSLContext | None:
    """The TLS context of ``broker.tls`` (None: no section; amqps then uses system CAs).

    Raises:
        ConfigError: a TLS file that cannot be loaded (naming ``broker.tls``).
    """
    tls = config.broker.tls
    if tls is None:
        return None
    try:
        return tls_context(
            ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file, verify=tls.verify
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{config.where('broker', 'tls')}: cannot load: {exc}") from None


def queue_from_config(
    config: AgentsConfig, *, connection_name: str, reply_owner: str | None = None
) -> MessageQueue:
    """The (unconnected) queue the broker section describes; with routes, a routing one.

    Every agent's inbox limits and the queue type come from the file, whoever declares
    the inbox: an inbox declared with other arguments elsewhere would fail with
    PRECONDITION_FAILED.

    Raises:
        ConfigError: as :func:`ssl_context_of` and :func:`~amqp_agents.config.build_router`.
    """
    broker = config.broker
    options: dict[str, Any] = {
        "namespace": broker.namespace,
        "publish_timeout_s": broker.publish_timeout_s,
        "connect_timeout_s": broker.connect_timeout_s,
        "max_body_bytes": broker.max_body_bytes,
        "passive": broker.passive,
        "history_max_age": broker.history_max_age,
        "history_max_bytes": broker.history_max_bytes,
        "inbox_max_lengths": {agent.id: agent.inbox.max_length for agent in config.agents},
        "inbox_delivery_limits": {agent.id: agent.inbox.delivery_limit for agent in config.agents},
        "queue_type": broker.queue_type,
        "history_replicas": broker.history_replicas,
        "history": broker.history,
        "history_db": config.history.secret_db(),
        "connection_name": connection_name,
        "ssl_context": ssl_context_of(config),
        "reply_owner": reply_owner,
        "senders": broker.senders,
        "trust_sender_word": broker.trust_sender_word,
    }
    if config.routes:
        return RoutingMessageQueue(build_router(config), broker.secret_url(), **options)
    return MessageQueue(broker.secret_url(), **options)


@contextlib.asynccontextmanager
async def broker_connection(
    config: AgentsConfig, name: str, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[AgentConnection]:
    """A connection to the broker as ``config`` says (URL, timeout, TLS), closed after.

    Args:
        config: the configuration.
        name: shown by the broker for the connection.
        ssl_context: TLS settings already loaded (default: from ``broker.tls``).

    Raises:
        BrokerConnectionError: the broker cannot be reached or refused us.
        ConfigError: as :func:`ssl_context_of`.
    """
    connection = await connect(
        resolve_url(config.broker.secret_url()),
        name=name,
        timeout_s=config.broker.connect_timeout_s,
        ssl_context=ssl_context if ssl_context is not None else ssl_context_of(config),
    )
    try:
        yield connection
    finally:
        await connection.close()


async def check_topology(config: AgentsConfig, queue: MessageQueue) -> None:
    """In passive mode, fail at start, listing everything missing, not at first use.

    Exchanges, inboxes, dead letters, history and retry queues are checked with passive
    declares (they need no permission); bindings cannot be checked over AMQP.

    Raises:
        TopologyError: one line naming what is missing and the command that creates it.
    """
    layout = layout_of(config).without_record()
    name = f"{queue.connection_name} (topology check)"
    async with broker_connection(config, name, queue.ssl_context) as connection:
        observed = await inspect_layout(connection, layout, check_arguments=False)
    missing = [
        f"{kind} {name!r}"
        for kind, checks in (("exchange", observed.exchanges), ("queue", observed.queues))
        for name, check in checks.items()
        if check.status is Status.MISSING
    ]
    if missing:
        shown = ", ".join(missing[:4]) + (
            f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        )
        raise TopologyError(
            f"passive mode: namespace {layout.namespace!r} is incomplete on the broker"
            f" (missing {shown}); create it first with `amqp-agents topology apply CONFIG`"
            " as a user that may configure it"
        )
