"""Preparing a run without a broker: agent selection, classes, TLS, and `routes explain`."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import textwrap
from pathlib import Path

import pytest

from amqp_agents import ConfigError, MessagePassingAgent, RoutingMessageQueue
from amqp_agents.cli import main
from amqp_agents.config import AgentsConfig, load_config
from amqp_agents.demo import ResearchAgent
from amqp_agents.runner import prepare, ssl_context_of

EXAMPLE = Path(__file__).parents[2] / "config" / "agents.example.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agents.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def example() -> AgentsConfig:
    return load_config(EXAMPLE, env={})


def test_prepare_builds_the_configured_agents(example: AgentsConfig) -> None:
    runner = prepare(example, drain_timeout_s=3)
    researcher, writer = runner.agents
    assert isinstance(researcher, ResearchAgent)
    assert (researcher.id, researcher.concurrency) == ("researcher", 4)
    assert researcher.drain_timeout_s == 3
    assert researcher.retry.max_attempts == 3 and researcher.retry.delays_s == (1.0, 5.0)
    assert (writer.id, writer.concurrency, writer.retry.max_attempts) == ("writer", 2, 2)
    assert isinstance(runner.queue, RoutingMessageQueue), "the example has routes"
    assert runner.queue.reply_owner is None, "two agents share the connection"
    inboxes = runner.queue.inboxes
    assert {agent: inbox.max_length for agent, inbox in inboxes.items()} == {
        "researcher": 10000,
        "writer": None,
    }
    assert runner.queue.options.queue_type == "quorum"


def test_a_subset_of_agents(example: AgentsConfig) -> None:
    runner = prepare(example, ["writer"])
    assert [a.id for a in runner.agents] == ["writer"]
    assert runner.queue.reply_owner == "writer", "its reply queues carry its id"


def test_an_unknown_agent_id_names_the_ones_defined(example: AgentsConfig) -> None:
    with pytest.raises(ConfigError, match=r"no agent 'ghost' in this file \(it defines: "):
        prepare(example, ["writer", "ghost"])


@pytest.mark.parametrize(
    ("class_path", "problem"),
    [
        ("amqp_agents.demo:NoSuchAgent", "has no attribute 'NoSuchAgent'"),
        ("no_such_module_xyz:Agent", "ModuleNotFoundError"),
        ("amqp_agents.demo:run_demo", "is not a subclass of MessagePassingAgent"),
    ],
)
def test_a_bad_agent_class_names_its_place(tmp_path: Path, class_path: str, problem: str) -> None:
    path = write(
        tmp_path,
        f"""
        agents:
          - id: ok
            class: amqp_agents.demo:WriterAgent
          - id: bad
            class: {class_path}
        """,
    )
    with pytest.raises(ConfigError) as info:
        prepare(load_config(path, env={}))
    assert str(info.value).startswith(f"{path}:5: agents[1].class: ")
    assert problem in str(info.value) and "\n" not in str(info.value)


def test_a_constructor_that_refuses_the_options_is_a_config_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        agents:
          - id: picky
            class: {__name__}:PickyAgent
        """,
    )
    with pytest.raises(ConfigError, match=r"agents\[0\]\.class: cannot create .*TypeError"):
        prepare(load_config(path, env={}))


class PickyAgent(MessagePassingAgent):
    def __init__(self, agent_id: str, queue: object) -> None:  # no concurrency, retry...
        raise AssertionError("not reached")


def test_dead_letter_false_is_refused_rather_than_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        agents:
          - id: w
            class: amqp_agents.demo:WriterAgent
            inbox: {dead_letter: false}
        """,
    )
    with pytest.raises(ConfigError, match=r"agents\[0\]\.inbox\.dead_letter: false is not"):
        prepare(load_config(path, env={}))


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_section_builds_a_verifying_context(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    path = write(
        tmp_path,
        f"""
        broker:
          url: amqps://agent@mq.example:5671/prod
          tls: {{ca_file: {cert.name}, cert_file: {cert.name}, key_file: {key.name}}}
        """,
    )
    context = ssl_context_of(load_config(path, env={}))
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert any(c["subject"] == ((("commonName", "localhost"),),) for c in context.get_ca_certs())


def test_tls_without_verification(tmp_path: Path) -> None:
    path = write(tmp_path, "broker: {url: 'amqps://mq:5671/', tls: {verify: false}}")
    context = ssl_context_of(load_config(path, env={}))
    assert context is not None and context.verify_mode is ssl.CERT_NONE


def test_an_unusable_tls_file_names_the_section(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    path = write(tmp_path, "broker: {url: 'amqps://mq:5671/', tls: {ca_file: ca.pem}}")
    with pytest.raises(ConfigError, match=r"agents\.yaml:1: broker\.tls: cannot load: "):
        ssl_context_of(load_config(path, env={}))


# -- routes explain (pure: no broker) ----------------------------------------------------


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["routes", "explain", str(EXAMPLE), *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_explain_shows_each_route_and_the_destinations(capsys: pytest.CaptureFixture[str]) -> None:
    lines = explain(capsys, "--type", "task", "--sender", "writer", "--priority", "4")
    assert lines[0] == (
        "task from writer, priority 4 (urgent), no recipient: routing key task.4.writer.-"
    )
    assert lines[1:6] == [
        "  routes[0]  type:task            match -> researcher",
        "  routes[1]  sender:researcher    no match",
        "  routes[2]  sender:writer*       match -> coordinator",
        "  routes[3]  priority:4           match -> coordinator",
        "  routes[4]  *                    match -> monitor",
    ]
    assert lines[6] == "goes to: researcher, coordinator, monitor"


def test_explain_reports_filters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        f"""
        external_agents: [archive, auditor]
        routes:
          - {{pattern: "*", destinations: [archive], filter: "{__name__}:not_ephemeral"}}
          - {{pattern: "type:status", destinations: [auditor], filter: "{__name__}:broken"}}
        """,
    )
    assert main(["routes", "explain", str(path), "--content", '"ephemeral"']) == 0
    out = capsys.readouterr().out
    assert f"match, filtered out by {__name__}:not_ephemeral" in out
    assert "goes to: nobody (sending it raises NoRouteError)" in out
    assert main(["routes", "explain", str(path), "--type", "status"]) == 0
    out = capsys.readouterr().out
    assert f"match, but filter {__name__}:broken raised ValueError: bug" in out
    assert "goes to: unknown" in out


def not_ephemeral(message: object) -> bool:
    return getattr(message, "content", None) != "ephemeral"


def broken(message: object) -> bool:
    raise ValueError("bug")


def test_a_run_believes_whom_the_senders_map_says(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        broker:
          url: amqp://svc:pw@localhost:5672/
          senders: {svc: [researcher, writer], ops-bot: [coordinator]}
        agents:
          - {id: researcher, class: "amqp_agents.demo:ResearchAgent"}
        """,
    )
    senders = prepare(load_config(path, env={})).queue.senders
    assert senders.own_user == "svc" and not senders.trust_sender_word
    assert senders.may_speak_for("ops-bot", "coordinator")
    assert not senders.may_speak_for("ops-bot", "researcher")
    assert not senders.may_speak_for(None, "coordinator")


def test_trust_sender_word_is_passed_on(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        broker: {trust_sender_word: true}
        agents:
          - {id: researcher, class: "amqp_agents.demo:ResearchAgent"}
        """,
    )
    assert prepare(load_config(path, env={})).queue.senders.may_speak_for(None, "anyone")


@pytest.mark.parametrize(
    ("senders", "problem"),
    [("{svc: [not an id]}", "invalid agent id"), ("{svc: researcher}", "expected a list")],
)
def test_a_bad_senders_map_names_its_place(tmp_path: Path, senders: str, problem: str) -> None:
    path = write(
        tmp_path,
        f"""
        broker:
          senders: {senders}
        agents:
          - {{id: researcher, class: "amqp_agents.demo:ResearchAgent"}}
        """,
    )
    with pytest.raises(ConfigError, match=rf"agents.yaml:2: broker\.senders.*{problem}"):
        load_config(path, env={})
