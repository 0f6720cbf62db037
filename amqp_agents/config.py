"""Agents' configuration: one YAML file, validated into pydantic models.

Sections (see config/agents.example.yaml)::

    broker:           where and how to connect: URL, namespace, TLS, timeouts, prefetch
    agents:           the agents to run: id, class, concurrency, retries, inbox limits
    external_agents:  ids that receive routed messages but are not run from this file
    routes:           where recipient-less messages go (see amqp_agents.routing)

What :func:`load_config` promises:

* every error names the file, the line and the field, one problem per line:
  ``agents.yaml:14: agents[0].retry.max_attempts: Input should be greater than 0``;
* ``${VAR}`` and ``${VAR:-default}`` in string values read the environment (the default
  when VAR is unset or empty; ``$${`` is a literal ``${``). A missing variable is an
  error naming it and its place: the literal text is never kept;
* the broker URL is a :class:`~pydantic.SecretStr`, and error texts are scrubbed of URL
  passwords: a password appears in no error, repr or log line.

Pure apart from reading the file: agent classes, filters and transforms are imported
only on request (:func:`import_object`, :func:`build_router`).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from .errors import ConfigError, InvalidMessageError, RoutingError
from .message import AGENT_ID_PATTERN
from .routing import MessageRouter, compile_rule
from .wire import DEFAULT_MAX_BODY_BYTES, validate_namespace

Loc = tuple[str | int, ...]
"""A place in the document: keys and list indexes from the top, as pydantic reports."""

_STR_TAG = "tag:yaml.org,2002:str"
_OBJECT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_REFERENCE = re.compile(
    r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{"
)
_URL_PASSWORD = re.compile(r"(?i)\b(amqps?://[^:/?#@\s]*:)[^@\s]*@")


# -- field types ------------------------------------------------------------------------


def _agent_id(value: str) -> str:
    # fullmatch: the pattern's "$" would accept a trailing newline (a YAML "|" block).
    if not re.fullmatch(AGENT_ID_PATTERN, value):
        raise ValueError(f"invalid agent id {value!r}: must match {AGENT_ID_PATTERN}")
    return value


def _object_path(value: str) -> str:
    if not _OBJECT_PATH.fullmatch(value):
        raise ValueError(f"{value!r} is not a 'module:name' path (e.g. 'myapp.agents:Writer')")
    return value


def _route_pattern(value: str) -> str:
    try:
        compile_rule(value)
    except RoutingError as exc:
        raise ValueError(str(exc)) from None
    return value


AgentId = Annotated[str, AfterValidator(_agent_id)]
ObjectPath = Annotated[str, AfterValidator(_object_path)]
"""``"package.module:Name"`` (the name may be dotted); checked here, imported later."""
RoutePattern = Annotated[str, AfterValidator(_route_pattern)]


class _Section(BaseModel):
    # Unknown keys are errors: a misspelt or mis-indented option must not be ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- the models -------------------------------------------------------------------------


class TlsConfig(_Section):
    """TLS options; relative paths are relative to the configuration file.

    Attributes:
        ca_file: CA bundle that signed the broker's certificate (None: system CAs).
        cert_file: client certificate, for brokers that authenticate by certificate.
        key_file: the client certificate's private key.
        verify: check the broker's certificate; turn off only for local tests.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _existing_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        base = (info.context or {}).get("base_dir")
        path = value if value.is_absolute() or base is None else Path(base) / value
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @model_validator(mode="after")
    def _certificate_with_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BrokerConfig(_Section):
    """Where the broker is and how to talk to it (see :class:`~amqp_agents.MessageQueue`).

    Attributes:
        url: ``amqp://`` or ``amqps://`` URL with the vhost in its path; a secret, as it
            may hold a password. None: ``$AMQP_URL``, else the local broker.
        namespace: prefix of every exchange and queue name.
        tls: TLS options; they need an ``amqps://`` URL.
        passive: only check that the topology exists (users without configure rights).
        publish_timeout_s: how long a send waits for the broker's confirm.
        connect_timeout_s: how long connecting may take.
        prefetch: deliveries an agent may hold unacknowledged.
        max_body_bytes: larger messages are refused before publishing.
        history_max_age: retention of the history stream by age (``7D``, ``12h``).
        history_max_bytes: retention of the history stream by size.
    """

    url: SecretStr | None = None
    namespace: str = "agents"
    tls: TlsConfig | None = None
    passive: bool = False
    publish_timeout_s: PositiveFloat = 10.0
    connect_timeout_s: PositiveFloat = 10.0
    prefetch: PositiveInt = 10
    max_body_bytes: PositiveInt = DEFAULT_MAX_BODY_BYTES
    history_max_age: str = Field(default="7D", pattern=r"^[0-9]+[YMDhms]$")
    history_max_bytes: PositiveInt = 1_000_000_000

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        scheme, sep, rest = value.get_secret_value().partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        if scheme.lower() not in ("amqp", "amqps") or not sep or not host:
            # The value is not shown: it may hold a password.
            raise ValueError("must be an amqp:// or amqps:// URL with a host")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        try:
            return validate_namespace(value)
        except InvalidMessageError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _tls_needs_amqps(self) -> BrokerConfig:
        url = self.secret_url()
        if self.tls is not None and url is not None and not url.lower().startswith("amqps://"):
            raise ValueError("tls is set, so the url must start with amqps://")
        return self

    def secret_url(self) -> str | None:
        """The URL in clear, for connecting only: never log or print it."""
        return None if self.url is None else self.url.get_secret_value()


class RetryConfig(_Section):
    """How often and how late a failed handler is retried (as ``agent.RetryPolicy``).

    Attributes:
        max_attempts: tries in all, the first included; 1 means no retry.
        delays_s: ``delays_s[i]`` is the wait before retry ``i + 1``; the last repeats.
    """

    max_attempts: PositiveInt = 3
    delays_s: tuple[NonNegativeFloat, ...] = (0.2, 1.0)

    @model_validator(mode="after")
    def _delays_for_retries(self) -> RetryConfig:
        if self.max_attempts > 1 and not self.delays_s:
            raise ValueError("delays_s needs at least one delay when max_attempts > 1")
        return self


class InboxConfig(_Section):
    """Limits of an agent's inbox.

    Attributes:
        max_length: messages the inbox holds at most; when full, senders get
            ``InboxFullError`` (None: unlimited).
        dead_letter: move messages the agent gives up on to ``{ns}.dead`` (False:
            drop them, with a log line).
    """

    max_length: PositiveInt | None = None
    dead_letter: bool = True


class AgentConfig(_Section):
    """One agent to run.

    Attributes:
        id: the agent id (its inbox is ``{ns}.inbox.{id}``).
        class_path: the agent class, ``module:Class``; YAML key ``class``.
        concurrency: messages handled at once.
        retry: the retry policy for failed handlers.
        inbox: the inbox's limits.
    """

    id: AgentId
    class_path: ObjectPath = Field(alias="class")
    concurrency: PositiveInt = 8
    retry: RetryConfig = RetryConfig()
    inbox: InboxConfig = InboxConfig()


class RouteConfig(_Section):
    """One route: a pattern, its destinations, and optional hooks (``module:function``).

    Attributes:
        pattern: ``*``, ``type:<type>``, ``priority:<1-4>``, ``sender:<id>`` or
            ``sender:<prefix>*``.
        destinations: agent ids that receive matching messages.
        filter: ``function(message) -> bool``; False drops this route for the message.
        transform: ``function(message) -> Message``, applied for these destinations.
    """

    pattern: RoutePattern
    destinations: tuple[AgentId, ...] = Field(min_length=1)
    filter: ObjectPath | None = None
    transform: ObjectPath | None = None


class AgentsConfig(_Section):
    """A whole configuration file; build it with :func:`load_config`."""

    broker: BrokerConfig = BrokerConfig()
    agents: tuple[AgentConfig, ...] = ()
    external_agents: tuple[AgentId, ...] = ()
    routes: tuple[RouteConfig, ...] = ()

    _source: str = PrivateAttr(default="<config>")
    _lines: dict[Loc, int] = PrivateAttr(default_factory=dict)

    def where(self, *loc: str | int) -> str:
        """``"agents.yaml:12: agents[0].class"``: the place of a field, for error messages."""
        return _place(self._source, self._lines, loc)

    @property
    def agent_ids(self) -> tuple[str, ...]:
        """Every agent the file knows, run here or elsewhere: the senders a sender-prefix
        route can name."""
        return tuple(dict.fromkeys([*(a.id for a in self.agents), *self.external_agents]))


# -- loading ----------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> AgentsConfig:
    """Read, substitute and validate a configuration file.

    Args:
        path: the YAML file.
        env: the variables ``${VAR}`` reads; default ``os.environ``.

    Raises:
        ConfigError: unreadable file, bad YAML, duplicate key, missing variable, invalid
            or unknown field, or inconsistent sections; one ``file:line: field: problem``
            line per problem.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    data, lines = _parse(text, source, os.environ if env is None else env)
    config = _validate(data, source, lines, base_dir=Path(path).parent)
    config._source, config._lines = source, lines
    problems = list(_cross_check(config))
    if problems:
        raise _config_error(source, lines, problems)
    return config


def _parse(text: str, source: str, env: Mapping[str, str]) -> tuple[Any, dict[Loc, int]]:
    """The two halves of ``yaml.safe_load``, with checks and substitution between them.

    Working on the node tree keeps every value's line for error messages.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(f"{source}: the file is empty")
        lines = {loc: line for loc, line, _ in _nodes(root)}
        problems = [*_duplicate_keys(root), *_substitute(root, env)]
        if problems:
            raise _config_error(source, lines, problems)
        return loader.construct_document(root), lines
    except yaml.YAMLError as exc:
        problem = _yaml_problem(source, exc)
    finally:
        loader.dispose()
    # Raised outside the except block: str() of a YAML error quotes the offending
    # line, which may be the URL's, so it must not ride along as __context__.
    raise ConfigError(_redact(problem))


def _validate(data: Any, source: str, lines: dict[Loc, int], base_dir: Path) -> AgentsConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:{lines[()]}: expected a mapping of broker, agents, routes")
    try:
        return AgentsConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
    # Raised outside the except block: the ValidationError, whose text shows input
    # values (the URL and its password), must not ride along as __context__.
    raise _config_error(source, lines, [(tuple(e["loc"]), _pydantic_message(e)) for e in errors])


def _pydantic_message(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field (check its spelling and indentation)"
    if error["type"] == "tuple_type":
        return "expected a list"
    return str(error["msg"]).removeprefix("Value error, ")


# -- the node tree ----------------------------------------------------------------------


def _nodes(root: yaml.Node) -> Iterator[tuple[Loc, int, yaml.Node]]:
    """Every node once, in document order, with its place and line (a value: its key's).

    A node reached again through an alias is skipped: substitution must not expand a
    value twice, and a recursive or exponential alias structure must not loop forever.
    """
    seen: set[int] = set()
    stack: list[tuple[Loc, int, yaml.Node]] = [((), root.start_mark.line + 1, root)]
    while stack:
        loc, line, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield loc, line, node
        if isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):
                if isinstance(key, yaml.ScalarNode):
                    stack.append(((*loc, key.value), key.start_mark.line + 1, value))
        elif isinstance(node, yaml.SequenceNode):
            items = list(enumerate(node.value))
            for index, item in reversed(items):
                stack.append(((*loc, index), item.start_mark.line + 1, item))


def _duplicate_keys(root: yaml.Node) -> Iterator[tuple[Loc, str]]:
    """PyYAML keeps the last of two equal keys silently; we refuse them."""
    for loc, _, node in _nodes(root):
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[str, int] = {}
        for key, _value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                continue
            line = key.start_mark.line + 1
            if key.value in first:
                yield (*loc, key.value), f"duplicate key (first at line {first[key.value]})"
            first.setdefault(key.value, line)


def _substitute(root: yaml.Node, env: Mapping[str, str]) -> Iterator[tuple[Loc, str]]:
    """Replace ``${VAR}`` references in string scalars, in place; yield the failures."""
    for loc, _, node in _nodes(root):
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG and "$" in node.value:
            try:
                node.value = substitute(node.value, env)
            except ValueError as exc:
                yield loc, str(exc)


def substitute(text: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in ``text`` from ``env``.

    ``substitute("amqp://${HOST:-localhost}/", {}) -> "amqp://localhost/"``;
    ``substitute("$${HOME}", {}) -> "${HOME}"``.

    Raises:
        ValueError: a variable without default is unset, or a ``${`` is malformed.
    """

    def expand(match: re.Match[str]) -> str:
        name = match["name"]
        if match[0] == "$${":
            return "${"
        if name is None:
            raise ValueError("malformed ${...} reference: use ${NAME} or ${NAME:-default}")
        value = env.get(name)
        if match["default"] is not None:
            return value or match["default"]
        if value is None:
            raise ValueError(
                f"environment variable {name} is not set (write ${{{name}:-default}} for a default)"
            )
        return value

    return _REFERENCE.sub(expand, text)


# -- checks across sections -------------------------------------------------------------


def _cross_check(config: AgentsConfig) -> Iterator[tuple[Loc, str]]:
    """What a single field cannot know: repeated ids and patterns, unknown destinations."""
    agent_ids: dict[str, int] = {}
    for i, agent in enumerate(config.agents):
        if agent.id in agent_ids:
            yield ("agents", i, "id"), f"agent {agent.id!r} is defined twice"
        agent_ids.setdefault(agent.id, i)
    known = set(agent_ids) | set(config.external_agents)
    patterns: dict[str, int] = {}
    for i, route in enumerate(config.routes):
        if route.pattern in patterns:
            yield (
                ("routes", i, "pattern"),
                f"{route.pattern!r} is also the pattern of routes[{patterns[route.pattern]}]:"
                " give one route all its destinations",
            )
        patterns.setdefault(route.pattern, i)
        rule = compile_rule(route.pattern, config.agent_ids)
        if rule.senders == ():
            yield (
                ("routes", i, "pattern"),
                f"no agent id in agents or external_agents starts with {rule.value!r}:"
                " a sender prefix matches only the agents the file knows",
            )
        for j, dest in enumerate(route.destinations):
            if dest not in known:
                yield (
                    ("routes", i, "destinations", j),
                    f"{dest!r} is not in agents; add it to external_agents if it runs elsewhere",
                )


# -- error text -------------------------------------------------------------------------


def _config_error(
    source: str, lines: dict[Loc, int], problems: list[tuple[Loc, str]]
) -> ConfigError:
    ordered = sorted(problems, key=lambda p: _line(lines, p[0]))
    text = "\n".join(f"{_place(source, lines, loc)}: {msg}" for loc, msg in ordered)
    return ConfigError(_redact(text))


def _place(source: str, lines: dict[Loc, int], loc: Loc) -> str:
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    where = f"{source}:{_line(lines, loc)}"
    return f"{where}: {field.lstrip('.')}" if field else where


def _line(lines: dict[Loc, int], loc: Loc) -> int:
    """The line of ``loc``, else of its nearest ancestor in the file (a missing field)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _yaml_problem(source: str, exc: yaml.YAMLError) -> str:
    # Only the problem and its position: str(exc) quotes the offending line, which
    # may hold a password.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f" ({exc.context})" if exc.context else ""
        return f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {exc.problem}{context}"
    return f"{source}: invalid YAML: {type(exc).__name__}"


def _redact(text: str) -> str:
    """Hide URL passwords, whatever path brought one into an error text."""
    return _URL_PASSWORD.sub(r"\1***@", text)


# -- importing what the file names ------------------------------------------------------


def import_object(path: str) -> Any:
    """Import ``"package.module:name"`` (``name`` may be dotted) and return the object.

    ``import_object("json:dumps") -> <function dumps>``;
    ``import_object("json:nope") -> ConfigError: cannot import 'json:nope': ...``.

    Raises:
        ConfigError: a malformed path, a module that fails to import, a missing name;
            the message is one line (the import's own error is chained).
    """
    if not isinstance(path, str) or not _OBJECT_PATH.fullmatch(path):
        raise ConfigError(f"{path!r} is not a 'module:name' path (e.g. 'myapp.agents:Writer')")
    module_name, _, name = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        detail = (str(exc).splitlines() or [""])[0]
        raise ConfigError(f"cannot import {path!r}: {type(exc).__name__}: {detail}") from exc
    for attr in name.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(
                f"cannot import {path!r}: module {module_name!r} has no attribute {name!r}"
            ) from None
    return obj


def build_router(config: AgentsConfig) -> MessageRouter:
    """A :class:`MessageRouter` with the file's routes, their filters and transforms.

    Raises:
        ConfigError: a filter or transform cannot be imported or is not callable; the
            message names the file, line and field.
    """
    router = MessageRouter(senders=config.agent_ids)
    for i, route in enumerate(config.routes):
        router.add_route(route.pattern, route.destinations)
        if route.filter is not None:
            router.add_filter(route.pattern, _hook(config, i, "filter", route.filter))
        if route.transform is not None:
            router.add_transform(route.pattern, _hook(config, i, "transform", route.transform))
    return router


def _hook(config: AgentsConfig, index: int, kind: str, path: str) -> Any:
    try:
        hook = import_object(path)
    except ConfigError as exc:
        raise ConfigError(f"{config.where('routes', index, kind)}: {exc}") from exc
    if not callable(hook):
        raise ConfigError(f"{config.where('routes', index, kind)}: {path!r} is not callable")
    return hook
