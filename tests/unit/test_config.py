"""Loading YAML configuration: validation, error places, ${VAR} substitution, secrets."""

from __future__ import annotations

import logging
import textwrap
import traceback
from pathlib import Path

import pytest

from amqp_agents import ConfigError, Message, MessagePriority, MessageType
from amqp_agents.config import (
    AgentsConfig,
    build_router,
    import_object,
    load_config,
    substitute,
)
from amqp_agents.retry import RetryPolicy

EXAMPLE = Path(__file__).parents[2] / "config" / "agents.example.yaml"
PASSWORD = "hunter2-Zq9"


def write(tmp_path: Path, text: str, name: str = "agents.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return str(info.value)


def is_clean(exc: BaseException | None) -> bool:
    """No trace of the password in the error, its formatted traceback, or its chain."""
    while exc is not None:
        shown = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
        if PASSWORD in shown:
            return False
        exc = exc.__cause__ or exc.__context__
    return True


# -- the example ------------------------------------------------------------------------


def test_example_loads_with_defaults() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.broker.secret_url() == "amqp://guest:guest@localhost:5672/"
    assert config.broker.namespace == "agents"
    assert [(a.id, a.class_path) for a in config.agents] == [
        ("researcher", "amqp_agents.demo:ResearchAgent"),
        ("writer", "amqp_agents.demo:WriterAgent"),
    ]
    assert config.agents[0].retry.delays_s == (1.0, 5.0)
    assert config.agents[0].inbox.max_length == 10000
    assert "coordinator" in config.external_agents
    patterns = [route.pattern for route in config.routes]
    assert patterns == ["type:task", "sender:researcher", "sender:writer*", "priority:4", "*"]


def test_example_reads_the_environment() -> None:
    env = {"AMQP_URL": f"amqps://svc:{PASSWORD}@mq.example:5671/prod", "AMQP_NAMESPACE": "prod"}
    config = load_config(EXAMPLE, env=env)
    assert config.broker.secret_url() == env["AMQP_URL"]
    assert config.broker.namespace == "prod"
    assert PASSWORD not in repr(config) + str(config) + config.model_dump_json()


def test_example_routes_build_a_router() -> None:
    router = build_router(load_config(EXAMPLE, env={}))
    task = Message(sender="coordinator", type=MessageType.TASK)
    assert router.get_destinations(task) == ["researcher", "monitor"]
    report = Message(sender="writer", type=MessageType.STATUS)
    assert router.get_destinations(report) == ["coordinator", "monitor"]
    # A sender prefix names only the agents the file knows (docs/wire-format.md).
    stranger = Message(sender="writer-2", type=MessageType.STATUS)
    assert router.get_destinations(stranger) == ["monitor"]


# -- errors name file, line and field ---------------------------------------------------


def test_unknown_key_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        agents:
          - id: writer
            class: app.agents:Writer
            retry:
              max_attempts: 2
              delay_s: [1]
        """,
    )
    assert load_error(path) == (
        f"{path}:6: agents[0].retry.delay_s: unknown field (check its spelling and indentation)"
    )


def test_every_invalid_field_is_reported_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        broker:
          publish_timeout_s: -1
        agents:
          - id: a.b
            class: app:A
          - class: app:B
        """,
    )
    lines = load_error(path).splitlines()
    assert lines[0].startswith(f"{path}:2: broker.publish_timeout_s: Input should be greater")
    assert lines[1].startswith(f"{path}:4: agents[0].id: invalid agent id 'a.b'")
    assert lines[2] == f"{path}:6: agents[1].id: Field required"


def test_bad_yaml_syntax_names_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        broker:
          url: amqp://localhost/
           namespace: x
        """,
    )
    assert load_error(path).startswith(f"{path}:3:")
    assert "invalid YAML" in load_error(path)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "expected a mapping"),
        ("a: 1\n---\nb: 2\n", "invalid YAML"),
        ("agents: !!python/object:os.system {}\n", "invalid YAML"),
        ("broker: {namespace: a}\nbroker: {namespace: b}\n", ":2: broker: duplicate key"),
    ],
)
def test_odd_documents_are_refused(tmp_path: Path, text: str, complaint: str) -> None:
    assert complaint in load_error(write(tmp_path, text))


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    assert "cannot read" in load_error(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("routes", "complaint"),
    [
        ('[{pattern: "type:job", destinations: [a]}]', "routes[0].pattern: route pattern"),
        ('[{pattern: "*", destinations: a}]', "routes[0].destinations: expected a list"),
        ('[{pattern: "*", destinations: []}]', "routes[0].destinations: "),
        ('[{pattern: "*", destinations: [ghost]}]', "'ghost' is not in agents"),
        (
            '[{pattern: "*", destinations: [a]}, {pattern: "*", destinations: [b]}]',
            "routes[1].pattern: '*' is also the pattern of routes[0]",
        ),
        ('[{pattern: "*", destinations: [a], filter: "not a path"}]', "routes[0].filter: "),
    ],
)
def test_bad_routes_are_refused(tmp_path: Path, routes: str, complaint: str) -> None:
    path = write(tmp_path, f"external_agents: [a, b]\nroutes: {routes}\n")
    assert complaint in load_error(path)


def test_agent_id_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "agents:\n  - class: 'x:A'\n    id: |\n      writer\n")
    assert "agents[0].id: invalid agent id 'writer\\n'" in load_error(path)


def test_an_agent_defined_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "agents: [{id: a, class: 'x:A'}, {id: a, class: 'x:B'}]\n")
    assert "agents[1].id: agent 'a' is defined twice" in load_error(path)


@pytest.mark.parametrize(
    ("retry", "complaint"),
    [
        ("{max_attempts: 2, delays_s: []}", "retry: delays_s needs at least one delay"),
        ("{max_attempts: 0}", "retry: max_attempts counts the first try"),
        ("{delays_s: [-1]}", "retry: retry delays cannot be negative"),
        ("{max_attempts: many}", "retry.max_attempts: Input should be a valid integer"),
    ],
)
def test_bad_retries_are_refused_by_the_retry_policy(
    tmp_path: Path, retry: str, complaint: str
) -> None:
    path = write(tmp_path, f"agents: [{{id: a, class: 'x:A', retry: {retry}}}]")
    assert f"{path}:1: agents[0].{complaint}" in load_error(path)


def test_the_retry_section_is_the_agents_retry_policy(tmp_path: Path) -> None:
    path = write(tmp_path, "agents: [{id: a, class: 'x:A', retry: {max_attempts: 4}}]")
    retry = load_config(path, env={}).agents[0].retry
    assert retry == RetryPolicy(max_attempts=4, delays_s=(0.2, 1.0))


def test_prefetch_is_refused_with_what_to_write_instead(tmp_path: Path) -> None:
    """It was never read: an agent's prefetch is its concurrency."""
    path = write(tmp_path, "broker:\n  prefetch: 10\n")
    assert load_error(path) == (
        f"{path}:2: broker.prefetch: no longer a setting: an agent's prefetch is its `concurrency`"
    )


# -- ${VAR} substitution ----------------------------------------------------------------


def test_missing_variable_names_it_and_its_place(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        broker:
          namespace: ${AGENTS_NS}
        """,
    )
    message = load_error(path)
    assert message == (
        f"{path}:2: broker.namespace: environment variable AGENTS_NS is not set"
        " (write ${AGENTS_NS:-default} for a default)"
    )


def test_missing_variable_is_never_kept_as_text(tmp_path: Path) -> None:
    path = write(tmp_path, "broker: {namespace: 'x${SUFFIX}'}\n")
    with pytest.raises(ConfigError):
        load_config(path, env={})
    assert load_config(path, env={"SUFFIX": "-prod"}).broker.namespace == "x-prod"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${NS:-agents}", {}, "agents"),
        ("${NS:-agents}", {"NS": ""}, "agents"),
        ("${NS:-agents}", {"NS": "prod"}, "prod"),
        ("${NS}", {"NS": ""}, ""),
        ("a-${X}-${Y:-y}", {"X": "x"}, "a-x-y"),
        ("$${NS}", {"NS": "prod"}, "${NS}"),
        ("cost: $5", {}, "cost: $5"),
        ("${NS:-}", {}, ""),
        ("${V}", {"V": "${W}"}, "${W}"),  # one pass: a value is not expanded again
    ],
)
def test_substitute(text: str, env: dict[str, str], expected: str) -> None:
    assert substitute(text, env) == expected


@pytest.mark.parametrize("text", ["${1X}", "${X", "${X:default}", "${}"])
def test_malformed_references_raise(text: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        substitute(text, {"X": "x"})


def test_default_substitution_feeds_typed_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        broker:
          publish_timeout_s: ${TIMEOUT:-2.5}
          passive: ${PASSIVE:-true}
        """,
    )
    broker = load_config(path, env={}).broker
    assert (broker.publish_timeout_s, broker.passive) == (2.5, True)


def test_substitution_through_an_alias_happens_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        external_agents: [&who "${WHO}", x]
        routes:
          - {pattern: "*", destinations: [*who]}
        """,
    )
    config = load_config(path, env={"WHO": "coordinator"})
    assert config.routes[0].destinations == ("coordinator",)


# -- secrets ----------------------------------------------------------------------------


def secret_config(tmp_path: Path, broker_extra: str = "", agents: str = "[]") -> Path:
    return write(
        tmp_path,
        f"""
        broker:
          url: amqp://agent:{PASSWORD}@mq.example:5672/prod
          {broker_extra}
        agents: {agents}
        """,
    )


@pytest.mark.parametrize(
    ("broker_extra", "agents"),
    [
        ("publish_timeout_s: nope", "[]"),  # an invalid field next to the URL
        ("", "[{id: a, class: 'x:A', colour: red}]"),  # an unknown key elsewhere
        ("namespace: ${MISSING}", "[]"),  # a missing variable
        ("tls: {verify: false}", "[]"),  # tls with an amqp:// URL
        ("  bad: indentation", "[]"),  # a YAML syntax error under the URL
        (f"url: amqp://agent:{PASSWORD}@mq: x", "[]"),  # ... and on a URL line
    ],
)
def test_password_never_appears_in_errors(tmp_path: Path, broker_extra: str, agents: str) -> None:
    path = secret_config(tmp_path, broker_extra, agents)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert is_clean(info.value)
    assert f"{path}:" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"http://agent:{PASSWORD}@mq/",
        f"amqp//agent:{PASSWORD}@mq/",
        f"amqp://agent:{PASSWORD}@/",
        f"agent:{PASSWORD}",
    ],
)
def test_invalid_url_is_reported_without_its_value(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f"broker:\n  url: '{url}'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert (
        str(info.value) == f"{path}:2: broker.url: must be an amqp:// or amqps:// URL with a host"
    )
    assert is_clean(info.value)


def test_password_is_not_logged_or_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = load_config(secret_config(tmp_path), env={})
    logging.getLogger("test").info("loaded %s %r", config, config.broker)
    assert PASSWORD not in caplog.text + repr(config) + config.model_dump_json()
    assert config.broker.secret_url() == f"amqp://agent:{PASSWORD}@mq.example:5672/prod"


# -- TLS --------------------------------------------------------------------------------


def test_tls_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / "certs" / name).write_text("x")
    path = write(
        tmp_path,
        """
        broker:
          url: amqps://mq.example/
          tls: {ca_file: certs/ca.pem, cert_file: certs/client.pem, key_file: certs/client.key}
        """,
    )
    tls = load_config(path, env={}).broker.tls
    assert tls is not None and tls.ca_file == tmp_path / "certs" / "ca.pem"


@pytest.mark.parametrize(
    ("tls", "complaint"),
    [
        ("{ca_file: nowhere.pem}", "broker.tls.ca_file: no such file"),
        ("{cert_file: agents.yaml}", "broker.tls: cert_file and key_file go together"),
    ],
)
def test_bad_tls_is_refused(tmp_path: Path, tls: str, complaint: str) -> None:
    path = write(tmp_path, f"broker:\n  url: amqps://mq.example/\n  tls: {tls}\n")
    assert complaint in load_error(path)


# -- module:name paths ------------------------------------------------------------------


def test_bad_class_string_is_refused_with_its_place(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        agents:
          - id: writer
            class: amqp_agents.demo.WriterAgent
        """,
    )
    assert load_error(path) == (
        f"{path}:3: agents[0].class: 'amqp_agents.demo.WriterAgent' is not a"
        " 'module:name' path (e.g. 'myapp.agents:Writer')"
    )


def test_import_object_finds_dotted_names() -> None:
    assert import_object("json:dumps") is __import__("json").dumps
    assert import_object("pathlib:Path.cwd") == Path.cwd


@pytest.mark.parametrize(
    ("path", "complaint"),
    [
        ("json.dumps", "is not a 'module:name' path"),
        ("json:", "is not a 'module:name' path"),
        ("no_such_module_xyz:thing", "cannot import 'no_such_module_xyz:thing': ModuleNotFound"),
        ("json:no_such_name", "module 'json' has no attribute 'no_such_name'"),
    ],
)
def test_import_object_errors_are_one_clear_line(path: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as info:
        import_object(path)
    assert complaint in str(info.value)
    assert "\n" not in str(info.value)


def urgent_only(message: Message) -> bool:
    return message.priority == 4


def test_build_router_imports_hooks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        external_agents: [coordinator]
        routes:
          - pattern: "*"
            destinations: [coordinator]
            filter: {__name__}:urgent_only
        """,
    )
    router = build_router(load_config(path, env={}))
    assert router.get_destinations(Message(priority=MessagePriority.URGENT)) == ["coordinator"]
    assert router.get_destinations(Message(priority=MessagePriority.NORMAL)) == []


@pytest.mark.parametrize(
    ("hook", "complaint"),
    [
        (
            "filter: json:no_such_filter",
            ":4: routes[0].filter: cannot import 'json:no_such_filter'",
        ),
        ("transform: json:__doc__", ":4: routes[0].transform: 'json:__doc__' is not callable"),
    ],
)
def test_build_router_names_the_place_of_a_bad_hook(
    tmp_path: Path, hook: str, complaint: str
) -> None:
    path = write(
        tmp_path,
        f"""
        external_agents: [a]
        routes:
          - pattern: "*"
            {hook}
            destinations: [a]
        """,
    )
    config = load_config(path, env={})
    with pytest.raises(ConfigError) as info:
        build_router(config)
    assert str(info.value).startswith(f"{path}{complaint}")


def test_config_models_refuse_unknown_keys_without_a_file() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        AgentsConfig.model_validate({"brokers": {}})


def test_history_mode_and_index_database_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "broker:\n  history: stream\nhistory:\n  db: postgresql://u:secret@db/agents\n",
    )
    config = load_config(path, env={})
    assert config.broker.history == "stream"
    assert config.history.secret_db() == "postgresql://u:secret@db/agents"
    assert "secret" not in repr(config.history)


def test_history_off_unquoted_is_off(tmp_path: Path) -> None:
    """YAML reads a bare `off` as false; the file still means history off."""
    config = load_config(write(tmp_path, "broker:\n  history: off\n"), env={})
    assert config.broker.history == "off"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("broker:\n  history: maybe\n", "broker.history"),
        ("history:\n  db: mysql://x/y\n", "must be a postgresql:// URL"),
        (
            "broker:\n  history: off\nhistory:\n  db: postgresql://db/agents\n",
            "an index needs the stream, but broker.history is off",
        ),
    ],
)
def test_bad_history_settings_are_one_clear_error(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in load_error(write(tmp_path, text))
