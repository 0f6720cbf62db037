"""The sender-authenticity rule: which validated ``user_id`` may speak for which agent.

One row per situation a deployment meets; a wrong answer is either a forged sender
believed or an authentic agent refused.
"""

from __future__ import annotations

import pytest

from amqp_agents import ConfigError, InvalidMessageError, Message
from amqp_agents.senders import SenderPolicy, connection_user

SVC_MAP = {"svc": frozenset({"researcher", "writer"})}
"""One RabbitMQ user, svc, serving two agents (as one ``amqp-agents run`` does)."""

RULE = [
    # (case, own user, senders map, trust, user_id, claimed sender, believed)
    ("the user is the sender (a)", "writer", {}, False, "researcher", "researcher", True),
    ("the user is another agent", "writer", {}, False, "mallory", "researcher", False),
    ("no user_id", "writer", {}, False, None, "researcher", False),
    ("an empty user_id", "writer", {}, False, "", "researcher", False),
    ("our own user, any sender (b)", "guest", {}, False, "guest", "researcher", True),
    ("our own user, no sender", "guest", {}, False, "guest", "", True),
    ("another user, no sender", "writer", {}, False, "mallory", "", False),
    ("the map lists the sender (c)", "coordinator", SVC_MAP, False, "svc", "writer", True),
    ("the map does not list it", "coordinator", SVC_MAP, False, "svc", "coordinator", False),
    ("the map speaks for svc only", "coordinator", SVC_MAP, False, "mallory", "writer", False),
    ("trust_sender_word, no user_id", "writer", {}, True, None, "researcher", True),
    ("trust_sender_word, another user", "writer", {}, True, "mallory", "researcher", True),
    ("unknown own user (EXTERNAL)", None, {}, False, None, "researcher", False),
]


@pytest.mark.parametrize(
    ("own", "senders", "trust", "user_id", "sender", "believed"),
    [row[1:] for row in RULE],
    ids=[row[0] for row in RULE],
)
def test_who_may_speak_for_whom(
    own: str | None,
    senders: dict[str, frozenset[str]],
    trust: bool,
    user_id: str | None,
    sender: str,
    believed: bool,
) -> None:
    policy = SenderPolicy(own, senders, trust)
    assert policy.may_speak_for(user_id, sender) is believed
    refusal = policy.refusal(user_id, sender)
    assert (refusal is None) is believed
    if refusal is not None:
        assert refusal.startswith("unauthenticated sender: "), refusal


@pytest.mark.parametrize(
    ("url", "user"),
    [
        ("amqp://researcher:pw@mq.example/prod", "researcher"),
        ("amqp://mq.example/", "guest"),  # what aiormq logs in as
        ("amqp://r%40x:pw@mq.example/", "r@x"),
        ("amqps://researcher@mq.example/?auth=external", "researcher"),
        ("amqps://mq.example/?auth=EXTERNAL", None),  # the certificate's user: unknown
    ],
)
def test_the_connection_user_is_the_one_the_broker_validates(url: str, user: str | None) -> None:
    assert connection_user(url) == user


def test_the_senders_map_needs_agent_ids() -> None:
    with pytest.raises(ConfigError, match=r"senders\['svc'\]"):
        SenderPolicy.of("amqp://svc:pw@mq/", senders={"svc": ["not an id"]})


def test_authenticate_senders_needs_an_agent_id_as_user_and_pins_sending_to_it() -> None:
    with pytest.raises(ConfigError, match="authenticate_senders"):
        SenderPolicy.of("amqp://bad%20name:pw@mq/", authenticate_senders=True)
    policy = SenderPolicy.of("amqp://writer:pw@mq/", authenticate_senders=True)
    policy.check_sendable(Message(sender="writer", recipient="x"))
    with pytest.raises(InvalidMessageError, match="may not speak for sender 'researcher'"):
        policy.check_sendable(Message(sender="researcher", recipient="x"))


@pytest.mark.parametrize(
    ("url", "senders", "sender", "sendable"),
    [
        ("amqp://guest:guest@mq/", {}, "anyone", True),  # no entry: receivers decide
        ("amqp://svc:pw@mq/", {"svc": ["writer"]}, "writer", True),
        ("amqp://svc:pw@mq/", {"svc": ["writer"]}, "svc", True),  # itself (a)
        ("amqp://svc:pw@mq/", {"svc": ["writer"]}, "researcher", False),
        ("amqp://svc:pw@mq/", {"other": ["writer"]}, "researcher", True),
    ],
)
def test_a_send_the_receivers_would_refuse_is_refused_before_publishing(
    url: str, senders: dict[str, list[str]], sender: str, sendable: bool
) -> None:
    policy = SenderPolicy.of(url, senders=senders)
    message = Message(sender=sender, recipient="x")
    if sendable:
        policy.check_sendable(message)
    else:
        with pytest.raises(InvalidMessageError, match="may not speak for"):
            policy.check_sendable(message)
