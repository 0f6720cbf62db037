"""What a valid agents configuration is: the pydantic models, without any YAML.

The sections of a configuration file (see config/agents.example.yaml)::

    broker:           where and how to connect: URL, namespace, TLS, timeouts
    agents:           the agents to run: id, class, concurrency, retries, inbox limits
    external_agents:  ids that receive routed messages but are not run from this file
    routes:           where recipient-less messages go (see amqp_agents.routing)
    history:          the PostgreSQL index history queries read (docs/history.md)

Kept apart from :mod:`amqp_agents.config` (reading the YAML file) so that the broker
layout (:mod:`amqp_agents.layout`), and through it the run-time path, can read a
configuration without importing PyYAML. Each route's pattern is compiled here, once,
while validating: the layout and the router reuse :attr:`RouteConfig.rule`. A sender
prefix (``sender:writer*``) is completed with the agents the file knows
(:attr:`AgentsConfig.agent_ids`), as it binds one key per known sender it names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import InvalidMessageError, RoutingError
from .message import AGENT_ID_PATTERN
from .retry import RetryPolicy
from .routing import CompiledRule, compile_rule
from .wire import (
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_HISTORY,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_QUEUE_TYPE,
    HistoryMode,
    QueueType,
    validate_namespace,
)

Loc = tuple[str | int, ...]
"""A place in the document: keys and list indexes from the top, as pydantic reports."""

OBJECT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
"""``package.module:name``, the form of a class, filter or transform in the file."""


# -- field types ------------------------------------------------------------------------


def _agent_id(value: str) -> str:
    # fullmatch: the pattern's "$" would accept a trailing newline (a YAML "|" block).
    if not re.fullmatch(AGENT_ID_PATTERN, value):
        raise ValueError(f"invalid agent id {value!r}: must match {AGENT_ID_PATTERN}")
    return value


def _object_path(value: str) -> str:
    if not OBJECT_PATH.fullmatch(value):
        raise ValueError(f"{value!r} is not a 'module:name' path (e.g. 'myapp.agents:Writer')")
    return value


def _version(value: Any) -> Any:
    # YAML reads `version: 1.10` as the number 1.1: refuse numbers rather than guess.
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f'write the version as a quoted string (e.g. "{value}"): YAML read a number'
        )
    return value


def _version_text(value: str) -> str:
    if not value.strip() or len(value) > 64:
        raise ValueError("a version is 1 to 64 characters, not blank")
    return value


CARD_FIELDS = ("description", "version", "a2a")
"""The agent fields that go into its card."""


def _compiled_route(value: Any) -> Any:
    # A pattern as written becomes its CompiledRule here, the only compile on the way
    # from the file to the broker's bindings and the consumer's checks.
    if not isinstance(value, str):
        return value
    try:
        return compile_rule(value)
    except RoutingError as exc:
        raise ValueError(str(exc)) from None


AgentId = Annotated[str, AfterValidator(_agent_id)]
ObjectPath = Annotated[str, AfterValidator(_object_path)]
"""``"package.module:Name"`` (the name may be dotted); checked here, imported later."""
RouteRule = Annotated[CompiledRule, BeforeValidator(_compiled_route)]
"""A route pattern, validated by compiling it (see :func:`amqp_agents.routing.compile_rule`)."""


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
        max_body_bytes: larger messages are refused before publishing.
        history_max_age: retention of the history stream by age (``7D``, ``12h``).
        history_max_bytes: retention of the history stream by size.
        senders: RabbitMQ user -> the agent ids it may speak for besides itself, for
            users that serve several agents (one ``amqp-agents run``); every process of
            the namespace reads the same file, so all of them believe the same.
        trust_sender_word: believe a message's claimed sender without checking the
            ``user_id`` RabbitMQ validated: only for a closed development vhost.
        history_replicas: nodes that keep the history stream (None: every node).
        queue_type: ``quorum`` (replicated, for a cluster; the default) or ``classic``
            (one node); every process of the namespace must use the same.
        history: ``stream`` (keep every message in ``{ns}.history``; the default) or
            ``off`` (no stream: sends cost the broker less, history queries fail);
            every process of the namespace must use the same.
    """

    url: SecretStr | None = None
    namespace: str = "agents"
    tls: TlsConfig | None = None
    passive: bool = False
    publish_timeout_s: PositiveFloat = 10.0
    connect_timeout_s: PositiveFloat = 10.0
    max_body_bytes: PositiveInt = DEFAULT_MAX_BODY_BYTES
    history_max_age: str = Field(default="7D", pattern=r"^[0-9]+[YMDhms]$")
    history_max_bytes: PositiveInt = 1_000_000_000
    senders: dict[Annotated[str, Field(min_length=1)], tuple[AgentId, ...]] = {}
    trust_sender_word: bool = False
    history_replicas: PositiveInt | None = None
    queue_type: QueueType = DEFAULT_QUEUE_TYPE
    history: HistoryMode = DEFAULT_HISTORY

    @field_validator("url")
    @classmethod
    def _amqp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        scheme, sep, rest = value.get_secret_value().partition("://")
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        if scheme.lower() == "memory" and sep:
            return value  # memory://NAME: the in-process broker (amqp_agents.memory)
        if scheme.lower() not in ("amqp", "amqps") or not sep or not host:
            # The value is not shown: it may hold a password.
            raise ValueError("must be an amqp:// or amqps:// URL with a host")
        return value

    @field_validator("history", mode="before")
    @classmethod
    def _history_off(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted `off` as false: `history: off` means what it says.
        return "off" if value is False else value

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


class HistoryConfig(_Section):
    """Where history queries are answered from (docs/history.md).

    Attributes:
        db: PostgreSQL URL of the history index (``postgresql://user@host/db``); a
            secret, as it may hold a password. Set: ``run`` also runs the indexer, and
            history queries read the index. None: they scan the stream.
    """

    db: SecretStr | None = None

    @field_validator("db")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must be a postgresql:// URL")  # the value may hold a password
        return value

    def secret_db(self) -> str | None:
        """The database URL in clear, for connecting only: never log or print it."""
        return None if self.db is None else self.db.get_secret_value()


class InboxConfig(_Section):
    """Limits of an agent's inbox.

    Attributes:
        max_length: messages the inbox holds at most; when full, senders get
            ``InboxFullError`` (None: unlimited).
        dead_letter: move messages the agent gives up on to ``{ns}.dead`` (False:
            drop them, with a log line).
        delivery_limit: quorum mode: deliveries without an ack (its process died each
            time) before the broker moves a message to ``{ns}.dead``.
    """

    max_length: PositiveInt | None = None
    dead_letter: bool = True
    delivery_limit: PositiveInt = DEFAULT_DELIVERY_LIMIT


class AgentConfig(_Section):
    """One agent to run.

    Attributes:
        id: the agent id (its inbox is ``{ns}.inbox.{id}``).
        class_path: the agent class, ``module:Class``; YAML key ``class``.
        concurrency: messages handled at once.
        retry: the retry policy for failed handlers, validated by
            :class:`~amqp_agents.retry.RetryPolicy` itself (YAML keys ``max_attempts``,
            ``delays_s``).
        inbox: the inbox's limits.
        description, version, a2a: the agent's card (cards.py), published when it
            starts and listed by ``amqp-agents agents``; a field left out keeps what
            the class's own card says.
    """

    id: AgentId
    class_path: ObjectPath = Field(alias="class")
    concurrency: PositiveInt = 8
    retry: RetryPolicy = RetryPolicy()
    inbox: InboxConfig = InboxConfig()
    description: Annotated[str, Field(max_length=2000)] = ""
    version: Annotated[str, BeforeValidator(_version), AfterValidator(_version_text)] = "0"
    a2a: dict[Annotated[str, Field(min_length=1)], Any] | None = None

    def card_fields(self) -> dict[str, Any]:
        """The card fields the file sets (for :meth:`AgentCard.model_copy`)."""
        return {name: getattr(self, name) for name in CARD_FIELDS if name in self.model_fields_set}


class RouteConfig(_Section):
    """One route: a pattern, its destinations, and optional hooks (``module:function``).

    Attributes:
        rule: the compiled pattern (YAML key ``pattern``): ``*``, ``type:<type>``,
            ``priority:<1-4>``, ``sender:<id>`` or ``sender:<prefix>*``.
        destinations: agent ids that receive matching messages.
        filter: ``function(message) -> bool``; False drops this route for the message.
        transform: ``function(message) -> Message``, applied for these destinations.
    """

    rule: RouteRule = Field(alias="pattern")
    destinations: tuple[AgentId, ...] = Field(min_length=1)
    filter: ObjectPath | None = None
    transform: ObjectPath | None = None

    @property
    def pattern(self) -> str:
        """The pattern as written in the file."""
        return self.rule.pattern


class ObservabilityConfig(_Section):
    """What ``amqp-agents run`` tells operators (docs/deploy.md, "Probes and metrics").

    Attributes:
        metrics_port: serve ``/metrics``, ``/healthz`` and ``/readyz`` on this port
            (0: any free one, logged); None: no probes.
        metrics_host: the address to listen on (all by default, for the orchestrator).
        reconnect_budget_s: how long a lost connection may be recovering before
            ``/healthz`` fails.
        log_format: ``text`` or ``json`` (one object per line, see amqp_agents.logs).
        tracing: ``auto`` traces when an OpenTelemetry SDK is configured in the
            process (e.g. by ``opentelemetry-instrument``); ``on`` always (extra
            ``otel``); ``off`` never.
    """

    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    metrics_host: str = "0.0.0.0"
    reconnect_budget_s: PositiveFloat = 60.0
    log_format: Literal["text", "json"] = "text"
    tracing: Literal["auto", "on", "off"] = "auto"


class AgentsConfig(_Section):
    """A whole configuration file; build it with :func:`amqp_agents.config.load_config`."""

    broker: BrokerConfig = BrokerConfig()
    agents: tuple[AgentConfig, ...] = ()
    external_agents: tuple[AgentId, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    history: HistoryConfig = HistoryConfig()
    observability: ObservabilityConfig = ObservabilityConfig()

    _source: str = PrivateAttr(default="<config>")
    _lines: dict[Loc, int] = PrivateAttr(default_factory=dict)

    def where(self, *loc: str | int) -> str:
        """``"agents.yaml:12: agents[0].class"``: the place of a field, for error messages."""
        return place_of(self._source, self._lines, loc)

    @property
    def agent_ids(self) -> tuple[str, ...]:
        """Every agent the file knows, run here or elsewhere: the senders a sender-prefix
        route can name."""
        return _known_ids(self.agents, self.external_agents)

    @field_validator("routes")
    @classmethod
    def _prefixes_name_known_agents(
        cls, routes: tuple[RouteConfig, ...], info: ValidationInfo
    ) -> tuple[RouteConfig, ...]:
        # Fields validate in order, so agents and external_agents are known here (when
        # valid): a sender prefix binds one key per agent id it names.
        known = _known_ids(info.data.get("agents", ()), info.data.get("external_agents", ()))
        return tuple(
            route.model_copy(update={"rule": route.rule.naming(known)}) for route in routes
        )


def _known_ids(agents: tuple[AgentConfig, ...], external: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*(agent.id for agent in agents), *external]))


def place_of(source: str, lines: dict[Loc, int], loc: Loc) -> str:
    """``"agents.yaml:12: agents[0].class"``: where ``loc`` is in the file ``source``."""
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    where = f"{source}:{line_of(lines, loc)}"
    return f"{where}: {field.lstrip('.')}" if field else where


def line_of(lines: dict[Loc, int], loc: Loc) -> int:
    """The line of ``loc``, else of its nearest ancestor in the file (a missing field)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1
