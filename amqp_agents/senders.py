"""Sender authenticity: which RabbitMQ user may speak for which agent.

The sender a message claims (``x-sender``, else the routing key's sender word) is
whatever its publisher wrote: RabbitMQ's topic permission pins the routing key's sender
word only on the exchange published to, and an agent user can route around that (an
exchange of its own bound to ``{ns}``, a queue that dead-letters into ``{ns}``:
docs/deploy.md). What RabbitMQ does check on every publish is the AMQP ``user_id``:
a publish whose ``user_id`` is not the connection's user is refused, and moving a
message (exchange bindings, dead-lettering, CC) never changes it. So ``user_id`` is
the identity, and a message is believed only when its user may speak for its sender:

(a) the user is the sender (one RabbitMQ user per agent);
(b) the user is this connection's own user: whoever holds our credentials can do
    anything we can anyway, so this grants nothing new; it keeps our own retry copies,
    one-user development setups (guest) and one ``amqp-agents run`` for several
    agents working;
(c) the ``senders`` map lists the agent for the user (one user serving several agents,
    as ``amqp-agents run`` does; every process of the namespace needs the same map).

A message without ``user_id`` is believed by nobody. ``trust_sender_word`` turns the
rule off (a closed development vhost), and says so in a warning at start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError, InvalidMessageError
from .message import Message, validate_agent_id

log = logging.getLogger(__name__)

PLAIN_DEFAULT_USER = "guest"
"""The user a URL without one logs in as (aiormq's PLAIN default)."""


def connection_user(url: str) -> str | None:
    """The RabbitMQ user ``url`` logs in as: the URL's user name, else ``guest``.

    With ``?auth=external`` the broker takes the user from the client certificate; the
    URL's user name, if given, must name it, else the user is unknown (None) and our
    messages carry no ``user_id``.

    >>> connection_user("amqp://researcher:pw@mq/prod"), connection_user("amqp://mq/")
    ('researcher', 'guest')
    """
    parts = urlsplit(url)
    user = unquote(parts.username or "")
    external = parse_qs(parts.query).get("auth", [""])[0].upper() == "EXTERNAL"
    return user or (None if external else PLAIN_DEFAULT_USER)


@dataclass(frozen=True, slots=True)
class SenderPolicy:
    """Whom each RabbitMQ user may speak for, as seen from one connection.

    Attributes:
        own_user: this connection's RabbitMQ user (None: unknown, see
            :func:`connection_user`); every message we publish carries it as ``user_id``.
        senders: RabbitMQ user -> the agent ids it may speak for, besides itself.
        trust_sender_word: believe the claimed sender without looking at ``user_id``.
    """

    own_user: str | None
    senders: Mapping[str, frozenset[str]] = field(default_factory=dict)
    trust_sender_word: bool = False

    @classmethod
    def of(
        cls,
        url: str,
        *,
        senders: Mapping[str, Iterable[str]] | None = None,
        trust_sender_word: bool = False,
        authenticate_senders: bool = False,
    ) -> SenderPolicy:
        """The policy of a connection to ``url``.

        ``authenticate_senders`` (kept from before sender authentication became the
        default) pins this connection to sending as its own user, which must be an
        agent id: it is ``senders={user: [user]}`` for our user.

        Raises:
            ConfigError: an agent id in ``senders`` that is not one, or
                ``authenticate_senders`` with a user name that is not an agent id.
        """
        own = connection_user(url)
        allowed: dict[str, frozenset[str]] = {}
        for user, agents in (senders or {}).items():
            try:
                allowed[user] = frozenset(validate_agent_id(agent) for agent in agents)
            except InvalidMessageError as exc:
                raise ConfigError(f"senders[{user!r}]: {exc}") from None
        if authenticate_senders:
            try:
                validate_agent_id(own or "")
            except InvalidMessageError:
                raise ConfigError(
                    f"authenticate_senders: the URL's user name {own!r} must be the agent's id"
                ) from None
            assert own is not None
            allowed[own] = frozenset({own})
        return cls(own, allowed, trust_sender_word)

    def may_speak_for(self, user_id: str | None, agent: str) -> bool:
        """Whether a message with this validated ``user_id`` may claim to be from ``agent``."""
        if self.trust_sender_word:
            return True
        if not user_id:
            return False
        return user_id in (agent, self.own_user) or agent in self.senders.get(user_id, ())

    def refusal(self, user_id: str | None, sender: str) -> str | None:
        """Why a delivery claiming ``sender`` must not be believed, or None."""
        if self.may_speak_for(user_id, sender):
            return None
        if not user_id:
            return f"unauthenticated sender: no user_id (claims to be {sender!r})"
        return f"unauthenticated sender: user_id {user_id!r} may not speak for {sender!r}"

    def check_sendable(self, message: Message) -> None:
        """Refuse, before publishing, a message the receivers would refuse as forged.

        Only a ``senders`` entry for our own user restricts us: receivers that share
        our user believe anything we send (rule b), and without an entry we cannot
        know whom the others' maps let us speak for.

        Raises:
            InvalidMessageError: our user's entry does not list the sender.
        """
        mine = self.senders.get(self.own_user or "")
        if mine is not None and message.sender not in mine and message.sender != self.own_user:
            raise InvalidMessageError(
                f"message {message.id}: RabbitMQ user {self.own_user!r} may not speak for"
                f" sender {message.sender!r} (it may for: {', '.join(sorted(mine))};"
                " see senders / authenticate_senders)"
            )

    def warn_if_trusting(self, namespace: str) -> None:
        """Say at start that this connection believes any claimed sender."""
        if self.trust_sender_word:
            log.warning(
                "trust_sender_word is on for namespace %r: messages are believed to come"
                " from whoever their x-sender or routing key says, without checking the"
                " user_id RabbitMQ validated; use it only on a closed development vhost",
                namespace,
            )
