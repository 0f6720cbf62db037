"""Reading an agents configuration from a YAML file (the models: :mod:`.config_schema`).

Sections (see config/agents.example.yaml)::

    broker:           where and how to connect: URL, namespace, TLS, timeouts
    agents:           the agents to run: id, class, concurrency, retries, inbox limits
    external_agents:  ids that receive routed messages but are not run from this file
    routes:           where recipient-less messages go (see amqp_agents.routing)
    observability:    probes and metrics port, log format, tracing (amqp-agents run)

What :func:`load_config` promises:

* every error names the file, the line and the field, one problem per line:
  ``agents.yaml:14: agents[0].concurrency: Input should be greater than 0``;
* ``${VAR}`` and ``${VAR:-default}`` in string values read the environment (the default
  when VAR is unset or empty; ``$${`` is a literal ``${``). A missing variable is an
  error naming it and its place: the literal text is never kept;
* the broker URL is a :class:`~pydantic.SecretStr`, and error texts are scrubbed of URL
  passwords: a password appears in no error, repr or log line.

Pure apart from reading the file: agent classes, filters and transforms are imported
only on request (:func:`import_object`, :func:`build_router`). Only the command line
and the runner import this module; agents and the broker client never load PyYAML.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from .config_schema import (
    OBJECT_PATH,
    AgentConfig,
    AgentsConfig,
    BrokerConfig,
    InboxConfig,
    Loc,
    RouteConfig,
    TlsConfig,
    line_of,
    place_of,
)
from .errors import ConfigError
from .retry import RetryPolicy
from .routing import MessageRouter

__all__ = [
    "AgentConfig",
    "AgentsConfig",
    "BrokerConfig",
    "InboxConfig",
    "RetryPolicy",
    "RouteConfig",
    "TlsConfig",
    "build_router",
    "import_object",
    "load_config",
    "substitute",
]

_STR_TAG = "tag:yaml.org,2002:str"
_REFERENCE = re.compile(
    r"\$\$\{|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{"
)
_URL_PASSWORD = re.compile(r"(?i)\b(amqps?://[^:/?#@\s]*:)[^@\s]*@")


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


_RETIRED: dict[Loc, str] = {
    ("broker", "prefetch"): "no longer a setting: an agent's prefetch is its `concurrency`",
}
"""Fields that configurations once had, with what to write instead."""


def _pydantic_message(error: ErrorDetails) -> str:
    retired = _RETIRED.get(tuple(error["loc"]))
    if retired is not None:
        return retired
    # extra_forbidden from our models, unexpected_keyword_argument from RetryPolicy.
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
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
    if config.history.db is not None and config.broker.history == "off":
        yield ("history", "db"), "an index needs the stream, but broker.history is off"
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
        if route.rule.senders == ():
            yield (
                ("routes", i, "pattern"),
                f"no agent id in agents or external_agents starts with {route.rule.value!r}:"
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
    ordered = sorted(problems, key=lambda p: line_of(lines, p[0]))
    text = "\n".join(f"{place_of(source, lines, loc)}: {msg}" for loc, msg in ordered)
    return ConfigError(_redact(text))


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
    if not isinstance(path, str) or not OBJECT_PATH.fullmatch(path):
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
        router.add_route(route.rule, route.destinations)
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
