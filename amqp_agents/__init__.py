"""amqp_agents: agents that talk to each other through RabbitMQ."""

from .agent import MessagePassingAgent, RetryPolicy, TaskHandle
from .errors import (
    AgentsError,
    BrokerConnectionError,
    ConfigError,
    DeliveryError,
    HandlerError,
    InboxFullError,
    InvalidMessageError,
    MessageTooLargeError,
    NoRouteError,
    PublishTimeoutError,
    RemoteError,
    RequestTimeoutError,
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

__all__ = [
    "AgentsError",
    "BrokerConnectionError",
    "ConfigError",
    "DeliveryError",
    "HandlerError",
    "InboxFullError",
    "InvalidMessageError",
    "Message",
    "MessagePassingAgent",
    "MessagePriority",
    "MessageQueue",
    "MessageTooLargeError",
    "MessageType",
    "NoRouteError",
    "PriorityMessageQueue",
    "PublishTimeoutError",
    "RemoteError",
    "RequestTimeoutError",
    "RetryPolicy",
    "Subscription",
    "TaskHandle",
    "TopologyError",
    "UnknownRecipientError",
    "create_result_message",
    "create_task_message",
]
