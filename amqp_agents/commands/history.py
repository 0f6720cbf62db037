"""``history`` and ``history index``: reading what a namespace's stream retained, and
copying it into the PostgreSQL index (docs/history.md).

``history`` only reads: its queue is passive. A long scan prints its progress on
stderr, so a large stream is never a silent wait.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from amqp_agents import wire
from amqp_agents.connection import resolve_url
from amqp_agents.errors import ConfigError, HistoryOffError, TopologyError
from amqp_agents.history import DEFAULT_SCAN_TIMEOUT, HistoryQuery, ScanProgress, follow_history
from amqp_agents.history_reader import history_off
from amqp_agents.message import Message
from amqp_agents.queue import MessageQueue

from . import options
from .messages import TIMELINE_HEADER, format_timeline

PROGRESS_EVERY = 10_000
"""Entries read between two progress lines of a long scan."""


def timestamp(text: str) -> datetime:
    """An ISO 8601 time for ``--since``/``--until`` (no zone: UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2026-11-30T09:00)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def positive_count(text: str) -> int:
    """A count of at least 1 (``--limit``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _progress(progress: ScanProgress) -> None:
    if not progress.done and progress.read and progress.read % PROGRESS_EVERY == 0:
        print(f"... read {progress.read:,} entries, {progress.matched} match", file=sys.stderr)


async def cmd_history(args: argparse.Namespace) -> int:
    """Print a conversation or an agent's history as a timeline; or run the indexer."""
    if args.action == "index":
        return await _run_indexer(args)
    if not (args.conversation or args.agent):
        options.usage_error(args, "give --conversation ID or --agent ID (or: history index)")
    if args.follow:
        return await _follow(args)
    bounds = {"since": args.since, "until": args.until, "limit": args.limit}
    timeout = DEFAULT_SCAN_TIMEOUT if args.timeout is None else args.timeout
    async with _namespace_with_history(args) as queue:
        if args.conversation:
            messages = await queue.get_conversation(
                args.conversation, **bounds, timeout=timeout, progress=_progress
            )
        else:
            messages = await queue.get_agent_history(
                args.agent, **bounds, timeout=timeout, progress=_progress
            )
        namespace = queue.namespace
    if not messages:
        print(f"no messages in the retained history of namespace {namespace!r}")
        return 0
    print(format_timeline(messages))
    return 0


async def _follow(args: argparse.Namespace) -> int:
    """Print each matching message as it reaches the stream (from --since, else only new
    ones) until Ctrl-C, --timeout, --limit messages or a message past --until."""
    query = HistoryQuery(
        conversation_id=args.conversation,
        agent_id=args.agent,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    async with _namespace_with_history(args) as queue:
        if not queue.options.keeps_history:
            raise history_off(queue.namespace)
        channel = await queue.channel()

        def show(message: Message) -> None:
            print(format_timeline([message]).splitlines()[-1], flush=True)

        try:
            async with asyncio.timeout(args.timeout):
                await follow_history(
                    channel,
                    queue.namespace,
                    query,
                    show,
                    on_ready=lambda: print(TIMELINE_HEADER, flush=True),
                )
        except TimeoutError:
            pass  # --timeout: the follow ends there, as asked
        finally:
            await channel.close()
    return 0


async def _run_indexer(args: argparse.Namespace) -> int:
    """Copy the namespace's history stream into PostgreSQL until SIGINT/SIGTERM."""
    config = options.load(args)
    db = args.db or (config.history.secret_db() if config else None)
    if not db:
        raise ConfigError(
            "history index: --db postgresql://... (or history.db in the --config file) is required"
        )
    try:
        from amqp_agents.history_indexer import Commit, run_indexer
    except ImportError as exc:
        raise ConfigError(
            f"history index needs the postgres extra (pip install 'amqp-agents[postgres]'): {exc}"
        ) from None
    namespace = options.namespace_of(args, config)
    url = args.url or (config.broker.secret_url() if config else None)
    async with _namespace_with_history(args) as queue:
        if not queue.options.keeps_history:
            raise HistoryOffError(
                f"history index: the history of namespace {namespace!r} is off (--history"
                " or broker.history): there is no stream to index"
            )  # else a missing namespace or stream is one line here, not an endless retry
    await _check_database(db)
    print(f"indexing {namespace}.history into the database; Ctrl-C stops", flush=True)

    def report(commit: Commit) -> None:
        print(f"indexed to offset {commit.next_offset} (+{commit.rows} messages)", flush=True)

    await run_indexer(resolve_url(url), namespace, db, on_commit=report)
    return 0


@asynccontextmanager
async def _namespace_with_history(args: argparse.Namespace) -> AsyncIterator[MessageQueue]:
    """The command's queue (passive) connected, once the namespace and its history
    stream are known to exist; each missing one is one line.

    Raises:
        TopologyError: the namespace does not exist.
        HistoryOffError: it exists without a history stream (its history is off).
    """
    queue = options.message_queue(args, passive=True)
    missing = f"queue {wire.history_name(queue.namespace)!r} does not exist"
    try:
        async with options.existing_namespace(queue) as connected:
            yield connected
    except TopologyError as exc:
        if missing not in str(exc):
            raise
        raise HistoryOffError(
            f"namespace {queue.namespace!r} has no history stream: its history is off"
            " (turn it on with broker.history: stream in every process, or --history"
            " stream on the command that declares it)"
        ) from None


async def _check_database(dsn: str) -> None:
    """Fail in one line when the index database does not answer at start (once running,
    the indexer rides out outages by itself instead)."""
    import asyncpg

    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except Exception as exc:
        raise ConfigError(
            f"history index: cannot reach the database --db: {type(exc).__name__}: {exc}"
        ) from None
    await connection.close()


def add_parsers(sub: argparse._SubParsersAction[options.Parser]) -> None:
    """Add ``history``."""
    history = sub.add_parser(
        "history",
        help="print a conversation or an agent's history; `history index` fills the index",
        description="Print the messages of one conversation, or every message sent by or"
        " to one agent, that the namespace's history stream still retains. `history index"
        " --db postgresql://...` copies the stream into PostgreSQL until stopped.",
    )
    options.add_config_option(history, required=False)
    options.add_broker_options(history)
    history.add_argument("action", nargs="?", choices=["index"], help="index: run the indexer")
    history.add_argument(
        "--db",
        help="PostgreSQL URL of the history index (postgresql://...; default: the file's"
        " history.db)",
    )
    which = history.add_mutually_exclusive_group()
    which.add_argument("--conversation", metavar="ID", help="a conversation id")
    which.add_argument("--agent", type=options.agent_id, metavar="ID", help="an agent id")
    history.add_argument("--since", type=timestamp, metavar="TIME", help="from this time on")
    history.add_argument("--until", type=timestamp, metavar="TIME", help="up to this time")
    history.add_argument(
        "--limit", type=positive_count, metavar="N", help="at most N messages (the oldest)"
    )
    history.add_argument(
        "--follow",
        action="store_true",
        help="keep printing matching messages as they are sent (from --since, else only"
        " new ones) until Ctrl-C or --timeout",
    )
    history.add_argument(
        "--timeout",
        type=options.positive_seconds,
        metavar="S",
        help=f"seconds the scan may take (default: {DEFAULT_SCAN_TIMEOUT:g}); with --follow,"
        " how long to follow (default: until Ctrl-C)",
    )
    history.set_defaults(func=cmd_history, parser=history)
