"""The public surface: an explicit, sorted and complete ``__all__``."""

from __future__ import annotations

import amqp_agents
from amqp_agents import errors


def test_all_is_sorted() -> None:
    assert amqp_agents.__all__ == sorted(amqp_agents.__all__)


def test_all_names_exist() -> None:
    for name in amqp_agents.__all__:
        assert hasattr(amqp_agents, name), name


def test_every_error_is_exported_and_derives_from_the_base() -> None:
    error_types = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__ == errors.__name__
    ]
    for error in error_types:
        assert issubclass(error, amqp_agents.AgentsError)
        assert error.__name__ in amqp_agents.__all__, error.__name__


def test_every_error_is_drawn_in_the_tree() -> None:
    doc = errors.__doc__ or ""
    for name in amqp_agents.__all__:
        obj = getattr(amqp_agents, name)
        if isinstance(obj, type) and issubclass(obj, amqp_agents.AgentsError):
            assert name in doc, name


def test_timeouts_are_also_builtin_timeouts() -> None:
    assert issubclass(amqp_agents.RequestTimeoutError, TimeoutError)
    assert issubclass(amqp_agents.PublishTimeoutError, TimeoutError)


def test_the_tutorials_names_still_import_the_broker_client() -> None:
    from amqp_agents.queue import MessageQueue, PriorityMessageQueue, Subscription

    assert MessageQueue is PriorityMessageQueue is amqp_agents.BrokerClient
    assert amqp_agents.MessageQueue is MessageQueue
    assert amqp_agents.Subscription is Subscription


def test_routing_message_queue_is_a_broker_client_given_its_router() -> None:
    router = amqp_agents.MessageRouter()
    queue = amqp_agents.RoutingMessageQueue(router, "amqp://guest:guest@localhost/", namespace="t")
    assert isinstance(queue, amqp_agents.BrokerClient)
    assert (queue.router, queue.namespace) == (router, "t")
    assert repr(queue).startswith("RoutingMessageQueue(")
