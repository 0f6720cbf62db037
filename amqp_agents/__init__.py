"""amqp_agents: agents that talk to each other through RabbitMQ."""

from . import _interrupt  # noqa: F401  (first: see its docstring)
from .agent import MessagePassingAgent
from .client import BrokerClient
from .errors import (
    AgentsError,
    BrokerConnectionError,
    BrokerUnreachableError,
    ConfigError,
    DeliveryError,
    HandlerError,
    HistoryError,
    HistoryLagError,
    HistoryOffError,
    HistoryQueryError,
    HistoryTimeoutError,
    InboxFullError,
    InboxUnavailableError,
    InvalidMessageError,
    MessageTooLargeError,
    NoRouteError,
    PublishTimeoutError,
    QueueUnavailableError,
    RemoteError,
    RequestTimeoutError,
    RoutingError,
    TopologyError,
    UnknownRecipientError,
)
from .message import (
    Message,
    MessagePriority,
    MessageType,
    create_result_message,
    create_task_message,
)
from .pull import Subscription
from .queue import MessageQueue, PriorityMessageQueue
from .retry import RetryPolicy
from .routed_queue import RoutingMessageQueue
from .routing import MessageRouter
from .rpc import TaskHandle

__all__ = [
    "AgentsError",
    "BrokerClient",
    "BrokerConnectionError",
    "BrokerUnreachableError",
    "ConfigError",
    "DeliveryError",
    "HandlerError",
    "HistoryError",
    "HistoryLagError",
    "HistoryOffError",
    "HistoryQueryError",
    "HistoryTimeoutError",
    "InboxFullError",
    "InboxUnavailableError",
    "InvalidMessageError",
    "Message",
    "MessagePassingAgent",
    "MessagePriority",
    "MessageQueue",
    "MessageRouter",
    "MessageTooLargeError",
    "MessageType",
    "NoRouteError",
    "PriorityMessageQueue",
    "PublishTimeoutError",
    "QueueUnavailableError",
    "RemoteError",
    "RequestTimeoutError",
    "RetryPolicy",
    "RoutingError",
    "RoutingMessageQueue",
    "Subscription",
    "TaskHandle",
    "TopologyError",
    "UnknownRecipientError",
    "create_result_message",
    "create_task_message",
]
