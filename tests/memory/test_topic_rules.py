"""AMQP's topic rules as the memory broker applies them (RabbitMQ's, word for word):
``#`` is zero or more words, ``*`` exactly one, and an empty string between dots is a
word. FastStream's in-memory broker got ``#`` wrong (one or more); ours must not.
The same keys are also routed by both brokers in tests/integration/test_routing.py."""

from __future__ import annotations

import pytest

from amqp_agents.memory import topic_matches


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("a.#", "a", True),  # zero words
        ("#.a", "a", True),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("#", "a.b.c", True),
        ("a.*", "a", False),  # exactly one word
        ("a.*", "a.", True),  # ... which may be empty
        ("*.b", ".b", True),
        ("*", "", False),  # the empty key has no words (RabbitMQ)
        ("#", "", True),
        ("", "", True),
        ("", "a", False),
        ("*.*", "a", False),
        ("a.*.c", "a..c", True),
        ("a.b", "a.b.c", False),
        ("#.#", "", True),
        ("*.#.*", "a", False),
        ("*.#.*", "a.b", True),
        ("task.*.*.writer", "task.2.boss.writer", True),
        ("task.*.*.writer", "task.2.boss.writers", False),
    ],
)
def test_topic_matching(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches
