"""AMQP's topic rules, as RabbitMQ applies them: the memory broker's topic exchanges.

>>> topic_matches("a.#", "a"), topic_matches("*.b", ".b"), topic_matches("*", "")
(True, True, False)
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=65536)
def topic_matches(pattern: str, key: str) -> bool:
    """Whether routing ``key`` matches binding ``pattern`` by AMQP's topic rules.

    Words are separated by dots (an empty string between two dots, or after a last
    dot, is a word; the empty key has no words, as RabbitMQ splits it); ``*`` matches
    exactly one word, ``#`` zero or more.

    >>> topic_matches("a.#", "a"), topic_matches("*.b", ".b"), topic_matches("*", "")
    (True, True, False)
    """
    return _match(_words(pattern), _words(key))


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split(".")) if text else ()


@functools.lru_cache(maxsize=65536)
def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])
