"""Observability without a broker (issue 14): hooks that cost nothing while off, the
extras' absence, the ``observability`` section and run's options, the probes' answers,
and JSON log lines outside a handler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from amqp_agents import ConfigError, Message, instrumentation
from amqp_agents.cli import parse_args
from amqp_agents.commands.topology import with_observability_options
from amqp_agents.config import load_config
from amqp_agents.logs import JsonFormatter
from amqp_agents.probes import ConnectionHealth, ProbeServer, readiness

ROOT = Path(__file__).parents[2]
DEPLOY = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")


def block(name: str) -> str:
    match = re.search(rf"<!-- {name} -->\n```yaml\n(.*?)```", DEPLOY, re.S)
    assert match, name
    return match.group(1)


@pytest.fixture(autouse=True)
def off() -> Iterator[None]:
    instrumentation.uninstrument()
    yield
    instrumentation.uninstrument()


async def test_every_hook_is_the_shared_no_op_while_nothing_listens() -> None:
    message = Message(sender="a", recipient="b", content=1)
    fake: Any = SimpleNamespace(headers={}, type="task")
    nothing = instrumentation.publishing("x", "k", fake)
    assert nothing is instrumentation.handling("a", fake, message)
    assert nothing is instrumentation.requesting(
        message, asyncio.get_running_loop().create_future(), 1.0
    )
    assert isinstance(nothing, contextlib.nullcontext)
    instrumentation.failed(RuntimeError())
    instrumentation.retried("a", fake)
    instrumentation.dead_lettered("a", fake)
    instrumentation.connected(fake)  # registers nothing on it
    assert instrumentation.trace_id() is None
    assert instrumentation.current_handling() is None
    assert not instrumentation.is_instrumented()


@pytest.mark.parametrize(
    ("option", "module", "extra"),
    [("tracing", "amqp_agents.tracing", "otel"), ("metrics", "amqp_agents.metrics", "metrics")],
)
def test_an_extra_that_is_not_installed_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, option: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as without the package
    with pytest.raises(ConfigError, match=f"extra '{extra}'"):
        instrumentation.instrument(**{option: True})
    assert not instrumentation.is_instrumented()


@pytest.mark.parametrize(
    ("value", "label"),
    [("task", "task"), ("result", "result"), ("x" * 300, "other"), (None, "other"), (3, "other")],
)
def test_a_message_type_label_takes_few_values(value: object, label: str) -> None:
    assert instrumentation.type_label(value) == label


def test_the_documented_observability_section_loads(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(block("observability-config"), encoding="utf-8")
    options = load_config(path, env={}).observability
    assert (options.metrics_port, options.metrics_host) == (9464, "0.0.0.0")
    assert (options.log_format, options.tracing, options.reconnect_budget_s) == ("json", "auto", 60)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("observability: {metrics_port: 70000}", "observability.metrics_port"),
        ("observability: {log_format: xml}", "observability.log_format"),
        ("observability: {tracing: maybe}", "observability.tracing"),
        ("observability: {metrics_prot: 1}", "observability.metrics_prot"),
    ],
)
def test_a_bad_observability_section_names_its_field(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(path, env={})


def test_the_documented_kubernetes_probes_point_at_the_probes() -> None:
    deployment = yaml.safe_load(block("kubernetes-probes"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][:1] == ["run"] and "--metrics-port" in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert yaml.safe_load(block("kubernetes-podmonitor"))["kind"] == "PodMonitor"


def test_run_options_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("observability: {metrics_port: 1, log_format: text}", encoding="utf-8")
    args = parse_args(["run", str(path), "--metrics-port", "0", "--log-format", "json"])
    config = with_observability_options(load_config(path, env={}), args)
    assert (config.observability.metrics_port, config.observability.log_format) == (0, "json")
    assert config.observability.metrics_host == "0.0.0.0"  # not given: the file's


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_a_bad_metrics_port_is_a_usage_error(
    tmp_path: Path, port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        parse_args(["run", str(path), "--metrics-port", port])
    assert exit_.value.code == 2
    assert "not a port number" in capsys.readouterr().err


class FakeConnection:
    """What ConnectionHealth reads of an AgentConnection."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.is_closed = False
        self.refusals = 0
        self.given_up: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
        self.close_callbacks: set[Any] = set()
        self.reconnect_callbacks: set[Any] = set()

    def lose(self) -> None:
        self.connected.clear()
        for callback in list(self.close_callbacks):
            callback(self, None)


def health_of(connection: FakeConnection, budget_s: float = 60) -> ConnectionHealth:
    fake: Any = connection
    return ConnectionHealth(fake, budget_s)


async def test_health_is_open_or_recovering_within_the_budget() -> None:
    connection = FakeConnection()
    health = health_of(connection, budget_s=60)
    assert health.problem() is None
    connection.lose()
    assert health.problem() is None  # recovering, within the budget
    assert health.down_since is not None
    health.down_since = time.monotonic() - 61
    assert "down for 61s (budget 60s)" in (health.problem() or "")
    connection.refusals = 2
    assert "refused our credentials or vhost (2 times" in (health.problem() or "")
    connection.given_up.set_result(Exception("refused 5 times"))
    assert "stopped reconnecting: refused 5 times" in (health.problem() or "")
    for callback in list(connection.reconnect_callbacks):
        callback(connection)
    assert health.down_since is None


def test_readiness_names_the_agents_that_do_not_consume() -> None:
    agents: Any = [
        SimpleNamespace(id="a", consuming=True),
        SimpleNamespace(id="b", consuming=False),
    ]
    assert readiness(agents)() == "not consuming: b"
    assert readiness(agents[:1])() is None


async def test_the_probe_server_answers_over_http() -> None:
    problems: dict[str, str | None] = {"health": None, "ready": "not consuming: b"}
    server = ProbeServer("127.0.0.1", 0, lambda: problems["health"], lambda: problems["ready"])
    await server.start()

    async def request(line: str) -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"{line}\r\nHost: x\r\n\r\n".encode())
        response = (await asyncio.wait_for(reader.read(), 5)).decode()
        writer.close()
        await writer.wait_closed()
        head, _, body = response.partition("\r\n\r\n")
        return int(head.split()[1]), body

    try:
        assert server.port > 0
        assert await request("GET /healthz HTTP/1.0") == (200, "ok\n")
        assert await request("GET /readyz HTTP/1.1") == (503, "not consuming: b\n")
        assert (await request("GET /metrics HTTP/1.0"))[0] == 200
        assert (await request("GET /other HTTP/1.0"))[0] == 404
        assert (await request("POST /healthz HTTP/1.0"))[0] == 405
    finally:
        await server.close()


def test_a_json_line_outside_a_handler_has_no_message_fields() -> None:
    record = logging.LogRecord("amqp_agents.runner", logging.INFO, "f", 1, "hi %s", ("x",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "hi x" and entry["level"] == "INFO"
    assert entry["logger"] == "amqp_agents.runner"
    assert not {"agent", "message_id", "conversation_id", "trace_id"} & set(entry)


@pytest.mark.parametrize(
    ("traceparent", "continued"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),  # long string
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),  # zero trace id
        ("garbage", False),
        (b"\xff\xfe", False),
        (12345, False),
    ],
)
def test_a_foreign_traceparent_is_continued_only_when_valid(
    traceparent: object, continued: bool
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from amqp_agents.tracing import Tracing

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    incoming: Any = SimpleNamespace(
        headers={"traceparent": traceparent}, exchange="ns", routing_key="task.2.a.b"
    )
    tracing = Tracing(provider)
    span, token = tracing.consumer("b", incoming, Message(sender="a", recipient="b", content=1), 0)
    tracing.detach(token)
    tracing.end(span, None)
    (handled,) = memory.get_finished_spans()
    assert (handled.parent is not None) is continued
    if continued:
        assert format(handled.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
