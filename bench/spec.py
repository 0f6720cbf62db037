"""The workload specification shared by every implementation.

Every implementation must use these constants so that the two sides of a
comparison do the same work.  See ``bench/README.md`` for the parity rules.
"""

from __future__ import annotations

import json
from typing import Any, Final

from pydantic import BaseModel

# --- sizes (full mode; ``--quick`` divides N by QUICK_DIVISOR) -------------------------
PIPE_N: Final = 20_000
RPC_SEQ_N: Final = 2_000
RPC_CONC_N: Final = 5_000
RPC_CONC_IN_FLIGHT: Final = 64
FANOUT_N: Final = 20_000
WARMUP_N: Final = 500
MEMORY_N: Final = 200_000
"""Messages one agent handles while its process's RSS is sampled (``memory``)."""
MEMORY_AGENTS: Final = 1_000
"""Agents started in one process (``memory``)."""
HISTORY_N: Final = 1_000_000
"""Messages retained in the history stream for the ``history`` workload."""
HISTORY_QUICK_N: Final = 10_000
"""The same with ``--quick``: N / 10 would still take minutes to fill and index."""
QUICK_DIVISOR: Final = 10

# --- broker-facing parameters -----------------------------------------------------------
PAYLOAD_BYTES: Final = 300
"""Target size of the JSON task body (``description`` + ``context``)."""

PUBLISH_WINDOW: Final = 100
"""At most this many unconfirmed publishes in flight (publisher confirms)."""

PREFETCH: Final = 100
"""basic.qos prefetch_count for every consumer."""

MAX_PRIORITY: Final = 4
"""``x-max-priority`` of inbox queues (native RabbitMQ priority): 4, as amqp_agents'
inboxes (``wire.INBOX_MAX_PRIORITY``), so both sides' queues do the same work."""

QUEUE_TYPES: Final = ("quorum", "classic")
"""``--queue-type``: both sides' durable queues are of this type (amqp_agents' default
first). Quorum queues have no priorities on RabbitMQ 3.10: the raw side's inbox is one
plain quorum queue, amqp_agents' is its lanes (only the NORMAL one gets traffic here)."""


def inbox_arguments(queue_type: str) -> dict[str, Any]:
    """The raw side's inbox: native priority (classic), or a plain quorum queue."""
    if queue_type == "classic":
        return {"x-max-priority": MAX_PRIORITY}
    return {"x-queue-type": "quorum"}


PIPE_PRIORITY: Final = 2
PIPE_ROUTING_KEY: Final = "task.2.producer.consumer"
"""Routing key layout: ``<kind>.<priority>.<sender>.<recipient>``."""

RPC_REQUEST_PRIORITY: Final = 2
"""NORMAL, what ``send_task`` uses by default."""
RPC_REQUEST_ROUTING_KEY: Final = "request.2.client.server"

FANOUT_BINDINGS: Final[tuple[str, ...]] = ("task.*.*.-", "result.*.*.-", "*.4.*.-", "*.2.*.-")
"""One queue per binding key."""

FANOUT_ROUTING_KEYS: Final[tuple[str, ...]] = (
    "task.4.producer.-",
    "task.2.producer.-",
    "result.4.producer.-",
    "result.2.producer.-",
)
"""Message i is published with ``FANOUT_ROUTING_KEYS[i % 4]`` and priority = its 2nd word.

Each key matches exactly two of ``FANOUT_BINDINGS`` and each binding matches
exactly two keys, so every message is delivered twice and every queue gets N/2.
"""

FANOUT_COPIES: Final = 2
"""Deliveries per published fanout message."""


def fanout_routing_key(i: int) -> str:
    return FANOUT_ROUTING_KEYS[i % len(FANOUT_ROUTING_KEYS)]


def fanout_priority(i: int) -> int:
    return int(fanout_routing_key(i).split(".")[1])


# --- message models ---------------------------------------------------------------------
class TaskBody(BaseModel):
    """The body of a pipe/fanout message; consumers decode it before acking."""

    description: str
    context: dict[str, Any]


class RpcRequest(BaseModel):
    method: str
    params: dict[str, Any]


class RpcReply(BaseModel):
    ok: bool
    result: dict[str, Any]


def make_payload(size: int = PAYLOAD_BYTES) -> dict[str, Any]:
    """A task body (``{"description": ..., "context": {...}}``) whose compact JSON is
    ``size`` bytes long (or slightly more if ``size`` is tiny)."""
    payload: dict[str, Any] = {
        "description": "Summarise the attached quarterly report and list the three main risks.",
        "context": {
            "source": "reports/2024-q3.pdf",
            "language": "en",
            "max_words": 200,
            "padding": "",
        },
    }
    current = len(json.dumps(payload, separators=(",", ":")).encode())
    payload["context"]["padding"] = "x" * max(0, size - current)
    return payload
