"""amqp_agents: agents that talk to each other through RabbitMQ."""

from . import _interrupt  # noqa: F401  (first: see its docstring)
from .agent import MessagePassingAgent
from .cards import AgentCard, AgentInfo, Skill
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
    PayloadError,
    PublishTimeoutError,
    QueueUnavailableError,
    RemoteError,
    RequestTimeoutError,
    RoutingError,
    TaskCancelledError,
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
from .task_state import TaskState, TaskUpdate

__all__ = [
    "AgentCard",
    "AgentInfo",
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
    "PayloadError",
    "PriorityMessageQueue",
    "PublishTimeoutError",
    "QueueUnavailableError",
    "RemoteError",
    "RequestTimeoutError",
    "RetryPolicy",
    "RoutingError",
    "RoutingMessageQueue",
    "Skill",
    "Subscription",
    "TaskCancelledError",
    "TaskHandle",
    "TaskState",
    "TaskUpdate",
    "TopologyError",
    "UnknownRecipientError",
    "create_result_message",
    "create_task_message",
]
