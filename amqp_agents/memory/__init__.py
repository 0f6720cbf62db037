"""An in-process broker with RabbitMQ's semantics: ``MessageQueue("memory://")``.

``memory://NAME`` is one broker per process and name, so every client of the same URL
in a process (agents, requesters, taps) shares it; ``memory://`` is the broker named
"". :mod:`.broker` keeps the exchanges, queues and bindings and does what crosses
queues (its docstring lists what is RabbitMQ's behaviour here and what cannot be);
:mod:`.queues` is one queue's order, consumers, expiry and stream log; :mod:`.topic`
AMQP's topic rules; :mod:`.transport` puts the broker under aio-pika, so the rest of
the library runs unchanged.
"""

from __future__ import annotations

from .broker import MemoryBroker, forget, named
from .topic import topic_matches

__all__ = ["MemoryBroker", "forget", "named", "topic_matches"]
