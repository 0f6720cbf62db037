"""The tutorial's names for the broker client: ``MessageQueue`` and ``PriorityMessageQueue``.

The class is :class:`amqp_agents.client.BrokerClient`; this module keeps the names the
tutorial (and code written from it) imports, ``from amqp_agents.queue import
MessageQueue``.
"""

from __future__ import annotations

from .client import BrokerClient
from .pull import Subscription

MessageQueue = BrokerClient
"""The tutorial's name for :class:`BrokerClient`."""

PriorityMessageQueue = BrokerClient
"""The tutorial's name: every inbox has native AMQP priority, so one class does both."""

__all__ = ["MessageQueue", "PriorityMessageQueue", "Subscription"]
