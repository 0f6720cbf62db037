"""Every error amqp_agents raises, in one tree.

A caller can catch :class:`AgentsError` for "anything this library refused or could not
do", or one branch for the failure it knows how to handle::

    AgentsError
    ├── ConfigError                 bad YAML, unknown keys, missing ${VAR}, bad class path
    │   └── RoutingError            a route pattern, destination or hook that is unusable
    ├── InvalidMessageError         an envelope that fails validation (ours or a foreign one)
    │   └── MessageTooLargeError    refused before publishing: over the size limit
    ├── BrokerConnectionError       broker unreachable, credentials refused, link lost
    │   └── BrokerUnreachableError  no node answered at all (says how to start one)
    ├── TopologyError               a queue/exchange is missing (passive mode) or conflicts
    ├── QueueUnavailableError       a queue's node is down or its leader being elected:
    │                               temporary, retried (agents resume when it is back)
    ├── DeliveryError               the broker did not take a message
    │   ├── UnknownRecipientError   no inbox is bound for the recipient (basic.return)
    │   ├── NoRouteError            a recipient-less message that no route matches
    │   ├── InboxFullError          the inbox is at its length limit (reject-publish nack)
    │   ├── InboxUnavailableError   a quorum lane without a majority refused it (nack)
    │   └── PublishTimeoutError     no confirm within the publish timeout (also TimeoutError)
    ├── RequestTimeoutError         send_task waited longer than its timeout (also TimeoutError)
    ├── RemoteError                 the handler on the other side raised; carries its error
    ├── TaskCancelledError          the task was cancelled (TaskHandle.cancel(), `amqp-agents
    │                               cancel`): what waiting for its result raises
    ├── HandlerError                raise it in a handler to fail WITHOUT retry: the
    │                               message goes straight to {ns}.dead (the requester
    │                               gets a RemoteError at once); raised by the library
    │                               when no handler / no LLM client fits a message
    │   └── PayloadError            a typed handler's payload does not fit its model: refused
    │                               at once (state "rejected"), neither retried nor dead-lettered
    └── HistoryError                a history query that cannot be answered (index unreachable)
        ├── HistoryQueryError       bad arguments: since after until, limit < 1 (also ValueError)
        ├── HistoryTimeoutError     a stream scan did not reach its end in time (also TimeoutError)
        ├── HistoryOffError         the namespace keeps no history (history off); says how
        │                           to turn it on
        └── HistoryLagError         the index did not catch up with the stream in time (also
                                    TimeoutError); says how far behind it is

Broker failures become these through :func:`map_exceptions`, one table per call site
(publish.py holds the publishing table), rather than through chains of ``except``.

"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

Translate = Callable[[BaseException], BaseException | None]
ErrorTable = Sequence[tuple[tuple[type[BaseException], ...], Translate]]
"""Rows of (exception types, translate): the first row whose types match translates the
exception; ``translate`` returns the error to raise instead, or None to let it through."""


class AgentsError(Exception):
    """Base class of every error raised by amqp_agents."""


class ConfigError(AgentsError):
    """A configuration file or value is invalid; the message names the place."""


class RoutingError(ConfigError):
    """A route cannot be compiled (unknown pattern form, bad value) or a hook misbehaved."""


class InvalidMessageError(AgentsError):
    """A message envelope or its wire form failed validation."""


class MessageTooLargeError(InvalidMessageError):
    """The encoded message exceeds the configured size limit; nothing was published."""


class BrokerConnectionError(AgentsError):
    """The broker could not be reached, refused our credentials, or the link was lost."""


class BrokerUnreachableError(BrokerConnectionError):
    """No broker node answered (nothing listening, a timeout); nothing refused us."""


class TopologyError(AgentsError):
    """An exchange/queue is missing or was declared elsewhere with other arguments."""


class QueueUnavailableError(AgentsError):
    """A queue exists but cannot answer now: its node is down, or (quorum) its leader
    is being elected. Temporary: the library retries with backoff; not a TopologyError,
    which is for what will not heal by waiting (see ``topology.declaration_errors``)."""


class DeliveryError(AgentsError):
    """The broker did not accept a message; it was not delivered anywhere."""


class UnknownRecipientError(DeliveryError):
    """No inbox exists for the message's recipient, so the broker returned it."""

    def __init__(self, recipient: str, message_id: str | None = None) -> None:
        self.recipient = recipient
        self.message_id = message_id
        super().__init__(f"no inbox for recipient {recipient!r} (message {message_id})")


class NoRouteError(DeliveryError):
    """A message without recipient matched no routing rule."""


class InboxFullError(DeliveryError):
    """The recipient's inbox is at its length limit and rejected the message."""


class InboxUnavailableError(DeliveryError):
    """The recipient's inbox lane has no majority of its nodes (quorum mode) and refused
    the message: nothing has it; sending again later may succeed."""


class PublishTimeoutError(DeliveryError, TimeoutError):
    """The broker did not confirm the publish in time (e.g. a resource alarm)."""


class RequestTimeoutError(AgentsError, TimeoutError):
    """No result arrived for a request before its timeout."""


class RemoteError(AgentsError):
    """The handler that processed our request raised.

    Attributes:
        error_type: the class name of the remote exception.
        error_message: its message.
        agent_id: the agent whose handler failed.
    """

    def __init__(self, error_type: str, error_message: str, agent_id: str = "") -> None:
        self.error_type = error_type
        self.error_message = error_message
        self.agent_id = agent_id
        super().__init__(f"{agent_id or 'remote'} raised {error_type}: {error_message}")


class TaskCancelledError(AgentsError):
    """The task was cancelled before it finished; there is no result.

    Attributes:
        task_id: the cancelled task's message id.
    """

    def __init__(self, task_id: str, detail: str = "") -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id} was cancelled" + (f": {detail}" if detail else ""))


class HandlerError(AgentsError):
    """A handler failed for good: raise it to fail WITHOUT retry.

    Any other exception from a handler is retried by the agent's RetryPolicy; this one
    dead-letters the message at once and sends the requester its ERROR reply. The
    library raises it too when an agent cannot handle a message (no LLM client).
    """


class PayloadError(HandlerError):
    """A message's content does not fit the pydantic model its handler takes.

    The requester gets it at once as a RemoteError naming the field; the message is
    acknowledged, neither retried nor dead-lettered (it is the sender's mistake, not
    the agent's crash).
    """


@contextlib.contextmanager
def map_exceptions(table: ErrorTable) -> Iterator[None]:
    """Translate what the body raises through ``table`` (in the style of httpx's).

    The translated error is raised ``from None``: the table's message carries what the
    caller needs, and the library's internal frames would only hide it.
    """
    try:
        yield
    except BaseException as exc:
        for types, translate in table:
            if isinstance(exc, types):
                mapped = translate(exc)
                if mapped is None:
                    raise
                raise mapped from None
        raise


class HistoryError(AgentsError):
    """A history query cannot be answered (e.g. the history index is unreachable)."""


class HistoryQueryError(HistoryError, ValueError):
    """A history query's arguments are unusable (since after until, limit below 1, ...)."""


class HistoryTimeoutError(HistoryError, TimeoutError):
    """A stream scan did not reach the end of the stream within its timeout."""


class HistoryOffError(HistoryError):
    """The namespace's history is off (no ``{ns}.history`` stream): nothing to query.

    Its message says how to turn history on; messages sent while it was off are not
    kept anywhere.
    """


class HistoryLagError(HistoryError, TimeoutError):
    """The history index did not catch up with the stream before the query's deadline.

    Attributes:
        lag_s: seconds since the indexer last committed (None: it never did).
        indexed_offset: the next stream offset the indexer will read (None: never ran).
    """

    def __init__(self, message: str, lag_s: float | None, indexed_offset: int | None) -> None:
        self.lag_s = lag_s
        self.indexed_offset = indexed_offset
        super().__init__(message)
