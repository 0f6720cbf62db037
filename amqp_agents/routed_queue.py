"""RoutingMessageQueue: the earlier name of a broker client constructed with routes.

``RoutingMessageQueue(router, url, ...)`` is ``MessageQueue(url, router=router, ...)``:
routes are composed into :class:`amqp_agents.client.BrokerClient`, which binds them on
connect, checks recipient-less sends against them and lets :func:`admission.admit`
apply them to every delivery. The routes themselves live in the pure
:mod:`amqp_agents.routing`.
"""

from __future__ import annotations

from typing import Any

from .broker_url import BrokerUrl
from .client import BrokerClient
from .routing import MessageRouter


class RoutingMessageQueue(BrokerClient):
    """A broker client whose recipient-less messages follow ``router``'s routes.

    Kept for code written against the subclass; new code passes ``router=`` to
    :class:`~amqp_agents.MessageQueue`. Routes added after :meth:`connect` need
    :meth:`bind_routes` to reach the broker.
    """

    router: MessageRouter

    def __init__(
        self,
        router: MessageRouter,
        url: BrokerUrl | None = None,
        *,
        namespace: str = "agents",
        **options: Any,
    ) -> None:
        super().__init__(url, namespace=namespace, router=router, **options)
