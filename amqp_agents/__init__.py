"""amqp_agents: agents that talk to each other through RabbitMQ."""

from .agent import MessagePassingAgent, TaskHandle
from .errors import (
    AgentsError,
    BrokerConnectionError,
    ConfigError,
    DeliveryError,
    HandlerError,
    HistoryError,
    HistoryLagError,
    HistoryQueryError,
    HistoryTimeoutError,
    InboxFullError,
    InvalidMessageError,
    MessageTooLargeError,
    NoRouteError,
    PublishTimeoutError,
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
from .queue import MessageQueue, PriorityMessageQueue, Subscription
from .retry import RetryPolicy
from .routed_queue import RoutingMessageQueue
from .routing import MessageRouter

__all__ = [
    "AgentsError",
    "BrokerConnectionError",
    "ConfigError",
    "DeliveryError",
    "HandlerError",
    "HistoryError",
    "HistoryLagError",
    "HistoryQueryError",
    "HistoryTimeoutError",
    "InboxFullError",
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
