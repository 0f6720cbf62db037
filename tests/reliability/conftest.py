"""Fixtures of the fault-injection suite: a private RabbitMQ node per test module.

Tests here break the broker (kill -9, disk alarm, closed connections), so they never
use the shared broker of ``tests/conftest.py``: each module gets a node of its own.

A module can tune its node with a module-level ``PRIVATE_BROKER_OPTIONS`` dict of
:class:`PrivateBroker` keyword arguments, e.g.
``PRIVATE_BROKER_OPTIONS = {"consumer_timeout_ms": 3000}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from private_broker import PrivateBroker


@pytest.fixture(scope="module")
def private_broker(request: pytest.FixtureRequest) -> Iterator[PrivateBroker]:
    """A started private node, shared by the tests of one module, always cleaned up.

    Tests that stop or kill it must bring it back before they end (the next test of
    the module gets the same node).
    """
    options: dict[str, Any] = getattr(request.module, "PRIVATE_BROKER_OPTIONS", {})
    broker = PrivateBroker(**options)
    try:
        broker.start()
        yield broker
    finally:
        broker.cleanup()
