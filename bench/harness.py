"""Runs the workloads for each implementation, alternating A B A B, and reports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import importlib.metadata
import json
import os
import platform
import secrets
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection

from bench import spec
from bench.base import Figures, Implementation

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/postgres"

IMPLEMENTATIONS: dict[str, str] = {
    "aio-pika": "bench.impl_aiopika:AioPikaImplementation",
    "amqp_agents": "bench.impl_amqp_agents:AmqpAgentsImplementation",
    "memory": "bench.impl_memory:MemoryImplementation",
    "amqp_agents-obs": "bench.impl_observed:ObservedAmqpAgentsImplementation",
    "amqp_agents-metrics": "bench.impl_observed:MetricsOnlyImplementation",
    "amqp_agents-tracing": "bench.impl_observed:TracingOnlyImplementation",
    "amqp_agents-off": "bench.impl_observed:UnobservedImplementation",
    "amqp_agents-sampled": "bench.impl_observed:SampledImplementation",
}
"""Name -> ``module:Class``; imported lazily so a broken plug-in does not stop the others."""
DEFAULT_IMPLEMENTATIONS: tuple[str, ...] = ("aio-pika", "amqp_agents")
"""What runs without ``--impl``; ``amqp_agents-obs`` (tracing and metrics on) and
``memory`` (amqp_agents on ``memory://``) on request."""

WORKLOADS: tuple[str, ...] = ("pipe", "rpc_seq", "rpc_conc", "fanout", "memory", "history")
SINGLE_RUN: frozenset[str] = frozenset({"memory", "history"})
"""Workloads measured once whatever ``--runs`` says: a growth check, not a race."""
RATIO: tuple[str, str] = ("amqp_agents", "aio-pika")
"""The ratio column is ``RATIO[0] / RATIO[1]`` (of the medians)."""

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OPEN_TIMEOUT = 30.0
CLOSE_TIMEOUT = 30.0


# --- configuration -------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    pipe: int
    rpc_seq: int
    rpc_conc: int
    fanout: int
    warmup: int
    memory: int
    memory_agents: int
    history: int
    in_flight: int = spec.RPC_CONC_IN_FLIGHT

    @classmethod
    def for_mode(cls, quick: bool, history: int | None = None) -> Sizes:
        d = spec.QUICK_DIVISOR if quick else 1
        return cls(
            pipe=spec.PIPE_N // d,
            rpc_seq=spec.RPC_SEQ_N // d,
            rpc_conc=spec.RPC_CONC_N // d,
            fanout=spec.FANOUT_N // d,
            warmup=spec.WARMUP_N // d,
            memory=spec.MEMORY_N // d,
            memory_agents=spec.MEMORY_AGENTS // d,
            history=history or (spec.HISTORY_QUICK_N if quick else spec.HISTORY_N),
        )

    def n(self, workload: str) -> int:
        value = getattr(self, workload)
        assert isinstance(value, int)
        return value


def call_budget(workload: str, n: int) -> float:
    """Outer safety-net timeout (seconds) for one workload call; assumes >= 100 ops/s."""
    ops = n * spec.FANOUT_COPIES if workload == "fanout" else n
    return 60.0 + ops / 100.0


async def call_workload(
    impl: Implementation,
    workload: str,
    n: int,
    sizes: Sizes,
    payload: dict[str, Any],
    db: str = DEFAULT_DB,
) -> Figures:
    budget = call_budget(workload, n)
    try:
        async with asyncio.timeout(budget) as scope:
            if workload == "pipe":
                return await impl.pipe(n, payload)
            if workload == "rpc_seq":
                return await impl.rpc_seq(n)
            if workload == "rpc_conc":
                return await impl.rpc_conc(n, sizes.in_flight)
            if workload == "fanout":
                return await impl.fanout(n)
            if workload == "memory":
                return await impl.memory(n, sizes.memory_agents)
            if workload == "history":
                return await impl.history(n, db)
    except TimeoutError:
        if scope.expired():
            raise TimeoutError(f"{workload}(n={n}) did not finish in {budget:.0f}s") from None
        raise
    raise ValueError(f"unknown workload {workload!r}")


def load_implementation(name: str) -> type[Implementation]:
    module_name, _, class_name = IMPLEMENTATIONS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Implementation)):
        raise TypeError(f"{IMPLEMENTATIONS[name]} is not an Implementation")
    return cls


# --- broker administration (version, clean-up) ------------------------------------------------
class Broker:
    """The harness's own connection: server version and sweeping leftover names."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: AbstractConnection | None = None
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()

    async def connect(self) -> AbstractConnection:
        if self._connection is None or self._connection.is_closed:
            self._connection = await aio_pika.connect(self.url, timeout=OPEN_TIMEOUT)
        return self._connection

    async def server_version(self) -> str:
        connection = await self.connect()
        transport = connection.transport
        if transport is None:
            return "unknown"
        version = transport.connection.server_properties.get("version", "unknown")
        return version.decode() if isinstance(version, bytes) else str(version)

    async def sweep(self, queues: set[str], exchanges: set[str]) -> None:
        """Delete the given names (idempotent) and forget them."""
        self.queues |= queues
        self.exchanges |= exchanges
        if not self.queues and not self.exchanges:
            return
        async with asyncio.timeout(CLOSE_TIMEOUT):
            connection = await self.connect()
            channel = await connection.channel(publisher_confirms=False)
            try:
                for name in sorted(self.queues):
                    await channel.queue_delete(name)
                    self.queues.discard(name)
                for name in sorted(self.exchanges):
                    await channel.exchange_delete(name)
                    self.exchanges.discard(name)
            finally:
                if not channel.is_closed:
                    await channel.close()

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._connection.close()


# --- results --------------------------------------------------------------------------------
@dataclass
class Cell:
    """All runs of one implementation on one workload."""

    status: str = "ok"  # "ok" | "n/a" | "error"
    runs: list[Figures] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    note: str = ""

    def summary(self) -> dict[str, dict[str, float]]:
        names: list[str] = []
        for figures in self.runs:
            names.extend(k for k in figures if k not in names)
        out: dict[str, dict[str, float]] = {}
        for name in names:
            values = [f[name] for f in self.runs if name in f]
            out[name] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "note": self.note,
            "runs": self.runs,
            "errors": self.errors,
            "summary": self.summary(),
        }


def higher_is_better(figure: str) -> bool:
    return figure.endswith("_per_s")


def fmt(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(
    results: dict[str, dict[str, Cell]], workloads: Sequence[str], impls: Sequence[str]
) -> str:
    header = ["workload", "figure", *(f"{name} median (min-max)" for name in impls)]
    show_ratio = all(name in impls for name in RATIO)
    if show_ratio:
        header.append(f"{RATIO[0]} / {RATIO[1]}")
    rows: list[list[str]] = []
    for workload in workloads:
        cells = results[workload]
        figures: list[str] = []
        for name in impls:
            figures.extend(k for k in cells[name].summary() if k not in figures)
        if not figures:
            figures = ["-"]
        for figure in figures:
            arrow = (
                ""
                if figure == "-"
                else (" (higher=better)" if higher_is_better(figure) else " (lower=better)")
            )
            row = [workload, figure + arrow]
            medians: dict[str, float] = {}
            for name in impls:
                cell = cells[name]
                stats = cell.summary().get(figure)
                if stats is None:
                    row.append("n/a" if cell.status == "n/a" else cell.status)
                    continue
                medians[name] = stats["median"]
                text = f"{fmt(stats['median'])} ({fmt(stats['min'])}-{fmt(stats['max'])})"
                if cell.errors:
                    text += f" [{len(cell.errors)} failed]"
                row.append(text)
            if show_ratio:
                a, b = (medians.get(name) for name in RATIO)
                row.append(f"{a / b:.2f}x" if a is not None and b else "n/a")
            rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


# --- running --------------------------------------------------------------------------------
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def measure(
    cls: type[Implementation],
    url: str,
    prefix: str,
    workload: str,
    sizes: Sizes,
    payload: dict[str, Any],
    broker: Broker,
    db: str = DEFAULT_DB,
    queue_type: str = spec.QUEUE_TYPES[0],
    history: str = "stream",
) -> Figures:
    """One measured run: fresh instance and connection, warm-up, measurement, clean-up."""
    impl = cls()
    impl.queue_type = queue_type
    impl.history_mode = history
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            await impl.open(url, prefix)
        if workload not in SINGLE_RUN:
            await call_workload(impl, workload, sizes.warmup, sizes, payload)
        return await call_workload(impl, workload, sizes.n(workload), sizes, payload, db)
    finally:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await impl.close()
        except Exception as exc:
            log(f"  warning: {cls.name}.close() failed: {exc!r}")
        try:
            await broker.sweep(set(impl.queues), set(impl.exchanges))
        except Exception as exc:
            log(f"  warning: clean-up of {prefix}* failed: {exc!r}")


async def run(args: argparse.Namespace) -> tuple[dict[str, dict[str, Cell]], str]:
    """Run everything; return the cells and the RabbitMQ version."""
    sizes = Sizes.for_mode(args.quick, args.history_messages)
    payload = spec.make_payload()
    run_prefix = f"bench-{secrets.token_hex(4)}"
    broker = Broker(args.url)
    rabbitmq_version = "unknown"
    results: dict[str, dict[str, Cell]] = {
        w: {i: Cell() for i in args.impl} for w in args.workloads
    }

    classes: dict[str, type[Implementation]] = {}
    for name in args.impl:
        try:
            classes[name] = load_implementation(name)
        except Exception as exc:
            log(f"{name}: cannot load: {exc!r}")
            for workload in args.workloads:
                results[workload][name] = Cell(status="error", note=f"cannot load: {exc!r}")

    try:
        if any(getattr(cls, "needs_broker", True) for cls in classes.values()):
            async with asyncio.timeout(OPEN_TIMEOUT):
                rabbitmq_version = await broker.server_version()
        log(f"RabbitMQ {rabbitmq_version}; prefix {run_prefix}; sizes {sizes}")
        for workload in args.workloads:
            runs = 1 if workload in SINGLE_RUN else args.runs
            for r in range(runs):
                for name in args.impl:
                    cell = results[workload][name]
                    if name not in classes or cell.status == "n/a":
                        continue
                    prefix = f"{run_prefix}.{name}.{workload}.{r + 1}"
                    t0 = time.perf_counter()
                    try:
                        figures = await measure(
                            classes[name],
                            args.url,
                            prefix,
                            workload,
                            sizes,
                            payload,
                            broker,
                            args.db,
                            args.queue_type,
                            args.history,
                        )
                    except NotImplementedError as exc:
                        cell.status = "n/a"
                        cell.note = f"not implemented: {exc}" if str(exc) else "not implemented"
                        log(f"[{workload} {r + 1}/{runs}] {name}: n/a")
                        continue
                    except Exception as exc:
                        detail = "".join(traceback.format_exception_only(exc)).strip()
                        cell.errors.append(f"run {r + 1}: {detail}")
                        if not cell.runs and r == runs - 1:
                            cell.status = "error"
                        log(f"[{workload} {r + 1}/{runs}] {name}: FAILED {detail}")
                        traceback.print_exc(file=sys.stderr)
                        continue
                    cell.runs.append(figures)
                    shown = ", ".join(f"{k}={fmt(v)}" for k, v in figures.items())
                    took = time.perf_counter() - t0
                    log(f"[{workload} {r + 1}/{runs}] {name}: {shown} ({took:.1f}s)")
    finally:
        with contextlib.suppress(Exception):
            await broker.sweep(set(), set())
        leftovers = broker.queues | broker.exchanges
        if leftovers:
            log(f"warning: could not delete {sorted(leftovers)}")
        await broker.close()

    return results, rabbitmq_version


def report(
    args: argparse.Namespace,
    results: dict[str, dict[str, Cell]],
    rabbitmq_version: str,
    started: float,
) -> int:
    """Print the table, write the JSON files; return the exit status."""
    sizes = Sizes.for_mode(args.quick, args.history_messages)
    wall = time.perf_counter() - started
    print()
    print(render_table(results, args.workloads, args.impl))
    failed = [
        (w, i, c) for w, cells in results.items() for i, c in cells.items() if c.errors or c.note
    ]
    for workload, name, cell in failed:
        for line in ([cell.note] if cell.note else []) + cell.errors:
            print(f"  {workload}/{name}: {line}")
    load_end = os.getloadavg()
    mode = "quick" if args.quick else "full"
    print(f"\nwall time {wall:.1f}s ({mode}, {args.runs} runs, {args.queue_type} queues)")
    print(
        f"load average {args.load_at_start[0]:.1f} at the start, {load_end[0]:.1f} at the end"
        f" ({os.cpu_count()} cores; other processes on the machine skew the figures)"
    )

    document = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "queue_type": args.queue_type,
        "history": args.history,
        "runs": args.runs,
        "wall_s": wall,
        "machine": {
            "cores": os.cpu_count(),
            "loadavg_start": args.load_at_start,
            "loadavg_end": load_end,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "rabbitmq": rabbitmq_version,
            "aio_pika": importlib.metadata.version("aio-pika"),
            "pydantic": importlib.metadata.version("pydantic"),
        },
        "sizes": sizes.__dict__,
        "order": "for each workload: run 1 of every implementation, then run 2, ...",
        "implementations": list(args.impl),
        "ratio": f"{RATIO[0]} / {RATIO[1]} of medians",
        "results": {w: {i: c.to_json() for i, c in cells.items()} for w, cells in results.items()},
    }
    out_dir = Path(args.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(document, indent=2) + "\n"
    (out_dir / f"{stamp}.json").write_text(text)
    (out_dir / "latest.json").write_text(text)
    print(f"results: {out_dir / (stamp + '.json')}")

    return 1 if any(c.status == "error" or c.errors for _, _, c in failed) else 0


def _csv(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown or text!r}; choose from {', '.join(choices)}"
            )
        return list(dict.fromkeys(items))

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per implementation")
    parser.add_argument("--quick", action="store_true", help="N / 10, for smoke tests")
    parser.add_argument(
        "--workloads", type=_csv(WORKLOADS), default=list(WORKLOADS), help="comma-separated"
    )
    parser.add_argument(
        "--impl",
        type=_csv(tuple(IMPLEMENTATIONS)),
        default=list(DEFAULT_IMPLEMENTATIONS),
        help="comma-separated implementations, in run order (amqp_agents-obs: amqp_agents"
        " with tracing and metrics on)",
    )
    parser.add_argument("--url", default=os.environ.get("BENCH_AMQP_URL", DEFAULT_URL))
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument(
        "--db",
        default=os.environ.get("BENCH_PG_URL", DEFAULT_DB),
        help="PostgreSQL server for the history index (a database is created and dropped)",
    )
    parser.add_argument(
        "--history-messages",
        type=int,
        default=None,
        help=f"messages retained for the history workload (default {spec.HISTORY_N:,})",
    )
    parser.add_argument(
        "--queue-type",
        choices=spec.QUEUE_TYPES,
        default=spec.QUEUE_TYPES[0],
        help="type of both sides' durable queues (default: %(default)s)",
    )
    parser.add_argument(
        "--history",
        choices=("stream", "off"),
        default="stream",
        help="amqp_agents' history mode for pipe, rpc and fanout (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.load_at_start = os.getloadavg()  # 1, 5, 15 minutes; recorded with the results
    started = time.perf_counter()
    results, rabbitmq_version = asyncio.run(run(args))
    return report(args, results, rabbitmq_version, started)
