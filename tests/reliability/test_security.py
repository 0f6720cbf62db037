"""Hostile input and access: scenarios 13-18 of issue 6, on a private RabbitMQ node.

13. A storm of hostile messages from a foreign client (hypothesis draws them): none
    reaches a handler, each lands once in ``{ns}.dead`` with a reason, no pickle is
    ever loaded, the agent's connection never drops and it serves the next message.
14. An oversized message is refused before publishing; the connection stays usable
    (and, as a control, the broker itself would have closed the channel).
15. With ``authenticate_senders``, agent A cannot make B believe a message came from C.
16. With docs/deploy.md's permissions, agent M cannot reach B's inbox by a forged
    route or the default exchange, reach B's retry queue, eavesdrop on B's inbox or
    answers, or consume B's inbox; what RabbitMQ 3.10 lets through (CC/BCC copies on
    the traffic exchange) B refuses to handle. Foreign clients' server-named reply
    queues are answered only with the doc's opt-in.
17. A deleted user: the library gives up reconnecting after a bounded number of
    refusals and reports a fatal BrokerConnectionError.
18. A ``${VAR}`` password appears in no log record, repr or error.

Scenario 19 (issue 17: forged senders in the default configuration and from
``amqp-agents run``) is in test_security_senders.py, which reuses this module's cast.

No test sleeps to synchronise: each awaits an event or a future under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import re
import shlex
import socket
import struct
import subprocess
import sys
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq.exceptions
import pytest
import pytest_asyncio
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractRobustChannel,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pamqp.commands import Basic
from private_broker import BrokerError, PrivateBroker

from amqp_agents import (
    BrokerConnectionError,
    ConfigError,
    InvalidMessageError,
    Message,
    MessagePassingAgent,
    MessageQueue,
    MessageTooLargeError,
    MessageType,
    RetryPolicy,
    wire,
)
from amqp_agents.config import AgentsConfig, load_config
from amqp_agents.connection import AgentConnection
from amqp_agents.message import AGENT_ID_PATTERN
from amqp_agents.runner import prepare

pytestmark = pytest.mark.reliability

WAIT_S = 20.0
"""Upper bound of every wait for the broker or an agent."""


# -- evidence that no pickle is ever loaded ----------------------------------------------

UNPICKLED: list[tuple[Any, ...]] = []
"""Every global an unpickler looked up in this process (``pickle.find_class`` audit)."""
PWNED: list[str] = []
"""Appended to by the payload of the hostile pickles, if one is ever loaded."""


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "pickle.find_class":
        UNPICKLED.append(args)


sys.addaudithook(_audit)  # permanent for the process; it only records


def pwned(marker: str) -> None:
    """What a hostile pickle calls when loaded: proof of code execution."""
    PWNED.append(marker)


class Exploit:
    """Pickles to a call of :func:`pwned`: loading it runs code."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (pwned, ("unpickled",))


# -- helpers -----------------------------------------------------------------------------


def _hex() -> str:
    return uuid.uuid4().hex[:8]


async def wait_until(condition: Callable[[], bool], changed: asyncio.Event, what: str) -> None:
    """Wait, at most WAIT_S, until ``condition()``; whoever makes progress sets ``changed``."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not condition():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"no {what} within {WAIT_S}s") from None


def has_id(message_id: str) -> Callable[[Message], bool]:
    return lambda message: message.id == message_id


class Recorder(MessagePassingAgent):
    """Records every message any handler sees; never fails."""

    def __init__(self, agent_id: str, queue: MessageQueue, **kwargs: Any) -> None:
        super().__init__(agent_id, queue, **kwargs)
        self.handled: list[Message] = []
        self.changed = asyncio.Event()
        for msg_type in MessageType:
            self.on(msg_type)(self._record)

    async def _record(self, message: Message) -> None:
        self.handled.append(message)
        self.changed.set()

    async def wait_for(self, predicate: Callable[[Message], bool], what: str) -> Message:
        await wait_until(lambda: any(map(predicate, self.handled)), self.changed, what)
        return next(m for m in self.handled if predicate(m))


QueueFactory = Callable[..., Awaitable[MessageQueue]]


class Queues:
    """Factory of connected MessageQueues on the private node in one namespace."""

    def __init__(self, broker: PrivateBroker, namespace: str, connection_name: str) -> None:
        self.broker = broker
        self.namespace = namespace
        self.connection_name = connection_name
        self.made: list[MessageQueue] = []

    async def __call__(self, url: str | None = None, **kwargs: Any) -> MessageQueue:
        """A connected queue as ``url``'s user (default: guest)."""
        kwargs.setdefault("namespace", self.namespace)
        kwargs.setdefault("connection_name", self.connection_name)
        queue = MessageQueue(url or self.broker.url, **kwargs)
        await queue.connect()
        self.made.append(queue)
        return queue

    async def close(self) -> None:
        for queue in self.made:
            await queue.close()


@pytest.fixture
async def make_queue(
    private_broker: PrivateBroker, namespace: str, request: pytest.FixtureRequest
) -> AsyncIterator[QueueFactory]:
    """Connected MessageQueues on the private node in the test's namespace; closed after."""
    queues = Queues(private_broker, namespace, f"test {request.node.nodeid}")
    yield queues
    await queues.close()


@pytest.fixture
async def foreign(private_broker: PrivateBroker) -> AsyncIterator[AbstractChannel]:
    """A plain aio-pika channel with confirms: a client that is not amqp_agents."""
    connection = await aio_pika.connect(private_broker.url, timeout=10)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


async def drain(channel: AbstractChannel, queue_name: str) -> list[AbstractIncomingMessage]:
    """Take (and ack) every message waiting in ``queue_name``."""
    queue = await channel.get_queue(queue_name, ensure=False)
    taken = []
    while (incoming := await queue.get(no_ack=False, fail=False, timeout=WAIT_S)) is not None:
        await incoming.ack()
        taken.append(incoming)
    return taken


async def message_count(channel: AbstractChannel, queue_name: str) -> int:
    declared = await channel.declare_queue(queue_name, passive=True)
    count = declared.declaration_result.message_count
    assert count is not None
    return count


class ConnectionWatch:
    """Records every close of a connection (for a robust one: each drop, even if it
    reconnects)."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.closes: list[BaseException | None] = []
        self.closed = asyncio.Event()
        connection.close_callbacks.add(self._on_close)

    def _on_close(self, _sender: object, exc: BaseException | None = None) -> None:
        self.closes.append(exc)
        self.closed.set()

    async def wait_closed(self) -> BaseException | None:
        await asyncio.wait_for(self.closed.wait(), WAIT_S)
        return self.closes[0]


# -- scenario 13: hostile messages from a foreign client ---------------------------------

FOREIGN_USER = "guest"
"""The RabbitMQ user of the ``foreign`` client (the private node's URL): every message
it sends carries it as ``user_id``, as docs/wire-format.md asks of foreign clients."""

BODY_LIMIT = 64 * 1024
"""The agent's max_body_bytes in scenario 13: larger bodies are refused unparsed."""


class RawProperties(Basic.Properties):
    """AMQP properties marshalled from bytes we write ourselves (not UTF-8, say)."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.raw = raw

    def marshal(self) -> bytes:
        return self.raw


class RawStr(str):
    """A routing key whose encoded form is arbitrary bytes (pamqp calls ``.encode``)."""

    raw: bytes = b""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def _shortstr(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def _table(entries: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A field table from (name, type tag + encoded value) pairs, bytes as given."""
    data = b"".join(_shortstr(name) + value for name, value in entries)
    return struct.pack(">I", len(data)) + data


def _longstr(data: bytes) -> bytes:
    return b"S" + struct.pack(">I", len(data)) + data


def raw_properties(
    *,
    content_type: bytes | None = b"application/json",
    headers: Sequence[tuple[bytes, bytes]] = (),
    message_id: bytes | None = None,
    timestamp: int | None = None,
    msg_type: bytes | None = None,
    user_id: bytes | None = FOREIGN_USER.encode(),
) -> RawProperties:
    """Content-header properties in AMQP 0-9-1's order and flag bits (with the foreign
    client's own user_id, so that what is judged is the oddity, not the sender)."""
    flags, parts = 0, []
    if content_type is not None:
        flags |= 0x8000
        parts.append(_shortstr(content_type))
    flags |= 0x2000
    parts.append(_table(headers))
    if message_id is not None:
        flags |= 0x0080
        parts.append(_shortstr(message_id))
    if timestamp is not None:
        flags |= 0x0040
        parts.append(struct.pack(">Q", timestamp))
    if msg_type is not None:
        flags |= 0x0020
        parts.append(_shortstr(msg_type))
    if user_id is not None:
        flags |= 0x0010
        parts.append(_shortstr(user_id))
    return RawProperties(struct.pack(">H", flags) + b"".join(parts))


@dataclass
class Hostile:
    """One message a foreign client sends to agent B, and what must become of it."""

    kind: str
    body: bytes
    properties: dict[str, Any] = field(default_factory=dict)
    """Basic.Properties keywords; ``headers`` gains ``x-case``."""
    raw: Callable[[int], RawProperties] | None = None
    """Instead of ``properties``: raw properties for case number n."""
    reason: str | None = "undecodable"
    """The x-dead-reason it must get (a prefix); None: handled once or dead once."""
    route: str = "exchange"
    """``exchange``: the traffic exchange, key ``{type}.2.foreign.{B}``; ``inbox``: the
    default exchange, straight into the inbox; ``cc``: addressed to someone else, with a
    CC header naming B; ``rawkey``: this routing key, bytes as given."""
    key: bytes = b""


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists and objects of ``inner`` (a named function: hypothesis 6.170 misreads the
    source of a lambda here and warns that it does not recurse, which fails the run)."""
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner)


VALID_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    _json_containers,
    max_leaves=10,
).map(lambda v: json.dumps(v).encode())

NEVER_UTF8 = st.sampled_from(
    [b"\xff", b"\xfe", b"\xc0\x80", b"\xc1\xbf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]
)
"""Byte sequences that make any byte string around them invalid UTF-8."""


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


def _is_json_content_type(value: str) -> bool:
    return (value or wire.CONTENT_TYPE).split(";")[0].strip().lower() == wire.CONTENT_TYPE


def _deep(depth: int, shape: str) -> bytes:
    if shape == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _weird_values() -> st.SearchStrategy[Any]:
    """Header values that are not text: what a string header must refuse."""
    return st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.booleans(),
        st.floats(width=32, allow_nan=False, allow_infinity=False),
        st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False),
        st.datetimes(
            min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
        st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=3),
        st.lists(st.integers(0, 9), max_size=3),
        st.binary(max_size=20).map(lambda b: bytearray(b"\xff" + b)),
    )


def hostile_messages(agent: str, ns: str) -> dict[str, st.SearchStrategy[Hostile]]:
    """Strategies per kind of hostile message, for agent ``agent`` in namespace ``ns``."""
    protocols = st.integers(0, pickle.HIGHEST_PROTOCOL)
    not_an_agent_id = st.text(min_size=1, max_size=20).filter(
        lambda s: not re.fullmatch(AGENT_ID_PATTERN, s)
    )
    other_agent = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True).filter(lambda s: s != agent)
    not_a_json_object = st.one_of(st.text(max_size=30), VALID_JSON.map(bytes.decode)).filter(
        lambda s: not (_is_json(s.encode()) and isinstance(json.loads(s), dict))
    )
    return {
        "body not UTF-8": st.builds(
            lambda pre, bad, post, quoted: Hostile(
                "body not UTF-8",
                (b'{"text": "' + pre + bad + post + b'"}') if quoted else pre + bad + post,
            ),
            st.binary(max_size=60),
            NEVER_UTF8,
            st.binary(max_size=60),
            st.booleans(),
        ),
        "body not JSON": st.one_of(
            st.text(max_size=80).map(str.encode),
            VALID_JSON.flatmap(
                lambda good: st.integers(0, len(good)).map(lambda cut: good[:cut] + b"}\x00")
            ),
        )
        .filter(lambda body: not _is_json(body))
        .map(lambda body: Hostile("body not JSON", body)),
        "content type not JSON": st.builds(
            lambda body, ctype: Hostile("content type not JSON", body, {"content_type": ctype}),
            VALID_JSON,
            st.one_of(
                st.sampled_from(
                    ["text/plain", "application/x-python-pickle", "application/octet-stream"]
                ),
                st.text(min_size=1, max_size=40),
            ).filter(lambda c: not _is_json_content_type(c)),
        ),
        "pickle": st.builds(
            lambda protocol, ctype: Hostile(
                "pickle", pickle.dumps(Exploit(), protocol=protocol), {"content_type": ctype}
            ),
            protocols,
            st.sampled_from(
                [None, "application/json", "application/x-python-pickle", "application/pickle"]
            ),
        ),
        "deeply nested body": st.builds(
            lambda depth, shape: Hostile("deeply nested body", _deep(depth, shape)),
            st.integers(1_500, 40_000),
            st.sampled_from(["array", "object"]),
        ),
        "deeply nested metadata": st.builds(
            lambda depth, shape: Hostile(
                "deeply nested metadata",
                b"{}",
                {"headers": {wire.H_METADATA: _deep(depth, shape).decode()}},
            ),
            st.integers(1_500, 20_000),
            st.sampled_from(["array", "object"]),
        ),
        "oversized body": st.integers(BODY_LIMIT, 4 * BODY_LIMIT).map(
            lambda n: Hostile("oversized body", b'"' + b"x" * n + b'"')
        ),
        "header not text": st.builds(
            # Straight into the inbox: RabbitMQ 3.10 closes the *publisher's* connection
            # (INTERNAL_ERROR) when a decimal header enters the history stream.
            lambda name, value: Hostile(
                "header not text", b"{}", {"headers": {name: value}}, route="inbox"
            ),
            st.sampled_from(
                [wire.H_SENDER, wire.H_RECIPIENT, wire.H_CONVERSATION, wire.H_METADATA]
            ),
            _weird_values(),
        ),
        "sender not an agent id": not_an_agent_id.map(
            lambda s: Hostile("sender not an agent id", b"{}", {"headers": {wire.H_SENDER: s}})
        ),
        "metadata not a JSON object": not_a_json_object.map(
            lambda s: Hostile(
                "metadata not a JSON object", b"{}", {"headers": {wire.H_METADATA: s}}
            )
        ),
        "unknown type": st.text(min_size=1, max_size=20)
        .filter(lambda t: t not in {m.value for m in MessageType})
        .map(lambda t: Hostile("unknown type", b"{}", {"message_type": t})),
        "recipient header for another agent": other_agent.map(
            lambda other: Hostile(
                "recipient header for another agent",
                b"{}",
                {"headers": {wire.H_RECIPIENT: other}},
                reason="misaddressed",
            )
        ),
        "CC copy": other_agent.map(
            lambda other: Hostile(
                "CC copy",
                b"{}",
                {"headers": {"CC": [f"notification.2.foreign.{agent}"]}},
                reason="misaddressed",
                route="cc",
                key=f"notification.2.foreign.{other}".encode(),
            )
        ),
        "reply_to an inbox": other_agent.map(
            lambda other: Hostile(
                "reply_to an inbox",
                b"{}",
                {"reply_to": wire.inbox_name(ns, other), "message_type": "request"},
                reason="reply_to",
            )
        ),
        "sender header not UTF-8": st.binary(max_size=10).map(
            lambda b: Hostile(
                "sender header not UTF-8",
                b"{}",
                raw=lambda n: raw_properties(
                    headers=[
                        (b"x-case", b"I" + struct.pack(">i", n)),
                        (b"x-sender", _longstr(b"\xff" + b)),
                    ]
                ),
            )
        ),
        "content type not UTF-8": NEVER_UTF8.map(
            lambda bad: Hostile(
                "content type not UTF-8",
                b"{}",
                raw=lambda n: raw_properties(
                    content_type=b"application/" + bad,
                    headers=[(b"x-case", b"I" + struct.pack(">i", n))],
                ),
            )
        ),
        "type not UTF-8": NEVER_UTF8.map(
            lambda bad: Hostile(
                "type not UTF-8",
                b"{}",
                raw=lambda n: raw_properties(
                    msg_type=b"task" + bad, headers=[(b"x-case", b"I" + struct.pack(">i", n))]
                ),
            )
        ),
        "routing key not UTF-8": NEVER_UTF8.map(
            lambda bad: Hostile(
                "routing key not UTF-8",
                b"{}",
                route="rawkey",
                key=b"notification.2.x" + bad + b"." + agent.encode(),
            )
        ),
    }


def tolerated_messages() -> dict[str, st.SearchStrategy[Hostile]]:
    """Odd but harmless: each must be handled once or dead-lettered once, never stuck.

    Most of these used to kill the consumer's connection inside pamqp (see
    amqp_agents/_frame_guard.py) or raise OverflowError in the agent.
    """

    def raw(**kwargs: Any) -> Callable[[int], RawProperties]:
        extra = kwargs.pop("headers", [])
        return lambda n: raw_properties(
            headers=[(b"x-case", b"I" + struct.pack(">i", n)), *extra], **kwargs
        )

    def nested(depth: int) -> bytes:
        value = b"V"
        for _ in range(depth):
            value = b"F" + _table([(b"k", value)])
        return value

    huge = st.integers(2**62, 2**64 - 1)
    strategies: dict[str, st.SearchStrategy[Hostile]] = {
        "message id not UTF-8": NEVER_UTF8.map(
            lambda bad: Hostile("message id not UTF-8", b"{}", raw=raw(message_id=b"id" + bad))
        ),
        "header name not UTF-8": NEVER_UTF8.map(
            lambda bad: Hostile(
                "header name not UTF-8", b"{}", raw=raw(headers=[(b"x-" + bad, b"V")])
            )
        ),
        "timestamp past 9999": huge.map(
            lambda ts: Hostile("timestamp past 9999", b"{}", raw=raw(timestamp=ts))
        ),
        "timestamp header past 9999": huge.map(
            lambda ts: Hostile(
                "timestamp header past 9999",
                b"{}",
                raw=raw(headers=[(b"x-when", b"T" + struct.pack(">Q", ts))]),
            )
        ),
        "header nested deeply": st.integers(100, 3_000).map(
            lambda depth: Hostile(
                "header nested deeply", b"{}", raw=raw(headers=[(b"x-deep", nested(depth))])
            )
        ),
        "odd optional header": st.builds(
            lambda name, value: Hostile(
                "odd optional header", b"{}", {"headers": {name: value}}, reason=None, route="inbox"
            ),
            st.sampled_from([wire.H_TIMESTAMP_US, wire.H_DEADLINE_US, wire.H_ATTEMPT]),
            st.one_of(st.integers(-(2**63), 2**63 - 1), _weird_values()),
        ),
    }
    return {kind: s.map(lambda c: replace(c, reason=None)) for kind, s in strategies.items()}


def draw(strategy: st.SearchStrategy[Hostile], examples: int) -> list[Hostile]:
    """``examples`` values of ``strategy``, drawn by hypothesis (no shrinking: a storm)."""
    drawn: list[Hostile] = []

    @settings(
        max_examples=examples,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def collect(case: Hostile) -> None:
        drawn.append(case)

    collect()
    return drawn


async def publish_case(
    channel: AbstractChannel, ns: str, agent: str, n: int, case: Hostile
) -> None:
    underlay = await channel.get_underlay_channel()
    properties: Basic.Properties
    if case.raw is not None:
        properties = case.raw(n)
        body = case.body if case.body != b"{}" else json.dumps({"case": n}).encode()
    else:
        kwargs = dict(case.properties)
        kwargs["headers"] = {**kwargs.get("headers", {}), "x-case": n}
        kwargs.setdefault("content_type", wire.CONTENT_TYPE)
        kwargs.setdefault("message_id", f"case-{n}")
        kwargs.setdefault("user_id", FOREIGN_USER)
        properties = Basic.Properties(**kwargs)
        body = case.body if case.body != b"{}" else json.dumps({"case": n}).encode()
    exchange, key = wire.exchange_name(ns), f"notification.2.foreign.{agent}"
    if case.route == "inbox":
        exchange, key = "", wire.inbox_name(ns, agent)
    elif case.route == "cc":
        key = case.key.decode()
    elif case.route == "rawkey":
        raw_key = RawStr("raw")
        raw_key.raw = case.key
        key = raw_key
        if case.raw is None:
            properties = raw_properties(headers=[(b"x-case", b"I" + struct.pack(">i", n))])
    await underlay.basic_publish(body, exchange=exchange, routing_key=key, properties=properties)


def case_of_dead(incoming: AbstractIncomingMessage) -> int:
    case = (incoming.headers or {}).get("x-case")
    assert isinstance(case, int), incoming.headers
    return case


def case_of_handled(message: Message) -> int | None:
    if message.id.startswith("case-"):
        return int(message.id.removeprefix("case-"))
    if isinstance(message.content, dict) and isinstance(message.content.get("case"), int):
        return int(message.content["case"])
    return None


async def test_hostile_messages_never_reach_a_handler_and_the_agent_keeps_serving(
    make_queue: QueueFactory, foreign: AbstractChannel, namespace: str
) -> None:
    # Controls: the audit hook sees an unpickling, and the payload runs when loaded.
    pickle.loads(pickle.dumps(Exploit()))
    assert PWNED == ["unpickled"] and UNPICKLED, "the pickle evidence does not work"
    PWNED.clear()
    UNPICKLED.clear()

    agent_id = f"b-{_hex()}"
    queue = await make_queue(max_body_bytes=BODY_LIMIT)
    agent = Recorder(agent_id, queue, concurrency=1)  # one at a time: the last is last
    await agent.start_consuming()
    watch = ConnectionWatch(queue.connection)

    hostile, tolerated = hostile_messages(agent_id, namespace), tolerated_messages()
    cases: list[Hostile] = []
    for strategy in hostile.values():
        cases += draw(strategy, 12)
    for strategy in tolerated.values():
        cases += draw(strategy, 6)
    assert {case.kind for case in cases} == hostile.keys() | tolerated.keys()
    for n, case in enumerate(cases):
        try:
            await publish_case(foreign, namespace, agent_id, n, case)
        except Exception as exc:
            raise AssertionError(f"the broker refused to take case {n}: {case}") from exc
    # The sentinel has no priority, so the inbox delivers it after everything above.
    sentinel = str(uuid.uuid4())
    await foreign.default_exchange.publish(
        aio_pika.Message(
            b'"after the storm"',
            message_id=sentinel,
            content_type="application/json",
            user_id=FOREIGN_USER,
        ),
        routing_key=wire.inbox_name(namespace, agent_id),
    )
    await agent.wait_for(has_id(sentinel), "the message after the storm")

    dead = await drain(foreign, wire.dead_queue_name(namespace))
    dead_by_case = Counter(case_of_dead(d) for d in dead)
    reasons = {case_of_dead(d): (d.headers or {}).get(wire.H_DEAD_REASON) for d in dead}
    handled = [m for m in agent.handled if m.id != sentinel]
    handled_by_case = Counter(case_of_handled(m) for m in handled)
    problems = []
    for n, case in enumerate(cases):
        outcome = f"{case.kind} #{n}: handled {handled_by_case[n]}, dead {dead_by_case[n]}"
        if case.reason is not None:
            if handled_by_case[n] or dead_by_case[n] != 1:
                problems.append(outcome)
            elif not str(reasons[n]).startswith(case.reason):
                problems.append(f"{outcome}, reason {reasons[n]!r} (expected {case.reason}...)")
        elif handled_by_case[n] + dead_by_case[n] != 1:
            problems.append(outcome)
        elif dead_by_case[n] and not reasons[n]:
            problems.append(f"{outcome}, without x-dead-reason")
    assert not problems, "\n".join(problems)
    assert set(dead_by_case) <= set(range(len(cases))), "dead letters of no case"
    assert None not in handled_by_case, "a handler saw a message of no case"
    assert await message_count(foreign, wire.inbox_name(namespace, agent_id)) == 0
    assert watch.closes == [], "the agent's connection dropped during the storm"
    assert PWNED == [] and UNPICKLED == [], "a pickle was loaded"

    # And it keeps serving: a message through the library, after the storm.
    sender = await make_queue()
    after = Message(sender="foreign", recipient=agent_id, content="still there?")
    await sender.send(after)
    await agent.wait_for(has_id(after.id), "a message sent through the library")
    await agent.stop()


# -- scenario 14: size limits ------------------------------------------------------------

BROKER_MAX_MESSAGE_BYTES = 1024 * 1024
"""The private node's max_message_size during scenario 14 (RabbitMQ's default: 128 MiB)."""


@pytest.fixture
def broker_message_limit(private_broker: PrivateBroker) -> Iterator[int]:
    """Lower the node's max_message_size (read by channels opened afterwards)."""
    private_broker.eval(
        f"application:set_env(rabbit, max_message_size, {BROKER_MAX_MESSAGE_BYTES})."
    )
    try:
        yield BROKER_MAX_MESSAGE_BYTES
    finally:
        private_broker.eval("application:set_env(rabbit, max_message_size, 134217728).")


async def test_oversized_messages_are_refused_before_publishing_and_the_connection_stays_usable(
    make_queue: QueueFactory, foreign: AbstractChannel
) -> None:
    agent = f"b-{_hex()}"
    limit = 256 * 1024
    queue = await make_queue(max_body_bytes=limit)
    await queue.ensure_inbox(agent)
    watch = ConnectionWatch(queue.connection)

    def sized(n: int) -> Message:
        return Message(sender="s", recipient=agent, content="x" * (n - 2))  # JSON quotes

    refused = [
        sized(limit + 1),  # just over the configurable limit
        Message(sender="s", recipient=agent, metadata={"m": "x" * wire.MAX_HEADER_BYTES}),
        Message(sender="s", recipient=agent, conversation_id="c" * 200_000),
        Message(sender="s", recipient=agent, reply_to="r" * 300),
        Message(sender="s", recipient=agent, id="é" * 200),  # 400 bytes
    ]
    for message in refused:
        with pytest.raises(MessageTooLargeError):
            await queue.send(message)
        # Refused before publishing: the very next send on the same channel works.
        await queue.send(sized(limit))
        got = await queue.receive(agent, timeout=WAIT_S)
        assert got is not None and len(got.content) == limit - 2
    assert watch.closes == []
    assert await message_count(foreign, wire.inbox_name(queue.namespace, agent)) == 0

    # The default limit is 4 MiB.
    default = await make_queue()
    with pytest.raises(MessageTooLargeError):
        await default.send(sized(wire.DEFAULT_MAX_BODY_BYTES + 1))


async def test_without_the_limit_the_broker_closes_the_channel_or_the_connection(
    make_queue: QueueFactory, private_broker: PrivateBroker, broker_message_limit: int
) -> None:
    # Controls: what the client-side limits spare us. A body over the broker's
    # max_message_size closes the publishing channel; a header frame over frame_max
    # closes the whole connection, every consumer on it included.
    connection = await aio_pika.connect(private_broker.url, timeout=10)
    dropped = ConnectionWatch(connection)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(exclusive=True)
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="message size"):
            await channel.default_exchange.publish(
                aio_pika.Message(b"x" * (broker_message_limit + 1)), routing_key=queue.name
            )
        assert channel.is_closed and not dropped.closes
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(aio_pika.exceptions.ConnectionClosed, match="frame_too_large"):
            await channel.default_exchange.publish(
                aio_pika.Message(b"{}", headers={"x-conversation-id": "c" * 200_000}),
                routing_key=queue.name,
            )
        assert "frame_too_large" in str(await dropped.wait_closed())
    finally:
        await connection.close()

    # When our limit is above the broker's, the broker's refusal is typed the same, and
    # the connection stays up while aio-pika reopens the publishing channel.
    agent = f"b-{_hex()}"
    library = await make_queue(max_body_bytes=4 * broker_message_limit)
    await library.ensure_inbox(agent)
    watch = ConnectionWatch(library.connection)
    publishing = library.publisher.channel  # to see aio-pika reopen it
    assert isinstance(publishing, AbstractRobustChannel)
    reopened = asyncio.Event()
    publishing.reopen_callbacks.add(lambda *_: reopened.set())
    with pytest.raises(MessageTooLargeError, match="max_message_size"):
        await library.send(
            Message(sender="s", recipient=agent, content="x" * 2 * broker_message_limit)
        )
    await asyncio.wait_for(reopened.wait(), WAIT_S)
    await library.send(Message(sender="s", recipient=agent, content="small again"))
    assert watch.closes == []


# -- scenario 15: sender authenticity ----------------------------------------------------

UserFactory = Callable[[str], Awaitable[str]]


@pytest.fixture
async def make_user(private_broker: PrivateBroker) -> AsyncIterator[UserFactory]:
    """Factory: a RabbitMQ user named ``name`` with all rights on ``/``; returns its URL.

    Users are node-wide, so names carry a random suffix; all are deleted after the test.
    """
    made: list[str] = []

    async def factory(name: str) -> str:
        password = uuid.uuid4().hex
        await asyncio.to_thread(private_broker.add_user, name, password)
        made.append(name)
        await asyncio.to_thread(private_broker.set_permissions, name)
        return f"amqp://{name}:{password}@127.0.0.1:{private_broker.amqp_port}/"

    yield factory
    for name in made:
        with contextlib.suppress(BrokerError):  # a test may have deleted it
            await asyncio.to_thread(private_broker.delete_user, name)


class FailingRecorder(Recorder):
    """A Recorder whose handler raises for some contents: the first time, or every time."""

    def __init__(
        self,
        agent_id: str,
        queue: MessageQueue,
        *,
        always_fail: Sequence[str] = ("always fail",),
        **kwargs: Any,
    ) -> None:
        super().__init__(agent_id, queue, **kwargs)
        self.always_fail = always_fail
        self.attempts: Counter[str] = Counter()

    async def _record(self, message: Message) -> None:
        if message.content == "fail once" or message.content in self.always_fail:
            self.attempts[message.id] += 1
            self.changed.set()
            if message.content in self.always_fail or self.attempts[message.id] == 1:
                raise RuntimeError(f"{message.content}: attempt {self.attempts[message.id]}")
        await super()._record(message)


async def test_agent_a_cannot_make_b_believe_a_message_came_from_c(
    make_user: UserFactory, make_queue: QueueFactory, foreign: AbstractChannel, namespace: str
) -> None:
    suffix = _hex()
    a, b, c = f"a-{suffix}", f"b-{suffix}", f"c-{suffix}"
    urls = {agent: await make_user(agent) for agent in (a, b, c)}
    queue_b = await make_queue(urls[b], authenticate_senders=True)
    retry = RetryPolicy(max_attempts=2, delays_s=(0.05,))
    agent_b = FailingRecorder(b, queue_b, concurrency=1, retry=retry)
    await agent_b.start_consuming()
    queue_a = await make_queue(urls[a], authenticate_senders=True)
    queue_c = await make_queue(urls[c], authenticate_senders=True)
    dead_queue = wire.dead_queue_name(namespace)

    # Authentic messages get through, sender intact; so do retries of them (the copy
    # B puts in its retry queue carries B's user_id, not C's, which RabbitMQ would
    # refuse on B's connection) and dead letters.
    for sender, queue, content in ((c, queue_c, "hi from c"), (a, queue_a, "hi from a")):
        sent = Message(sender=sender, recipient=b, content=content)
        await queue.send(sent)
        assert (await agent_b.wait_for(has_id(sent.id), content)).sender == sender
    once = Message(sender=c, recipient=b, content="fail once")
    await queue_c.send(once)
    assert (await agent_b.wait_for(lambda m: m.id == once.id, "the retry")).sender == c
    always = Message(sender=c, recipient=b, content="always fail")
    await queue_c.send(always)
    # Its last attempt is B's delivery in hand; with prefetch 1 the inbox's next
    # delivery waits for its dead-lettering and ack.
    await wait_until(lambda: agent_b.attempts[always.id] == 2, agent_b.changed, "the last try")

    # Answers too: C cannot make A believe B answered its task.
    release = asyncio.Event()

    async def answer(message: Message) -> str:
        await release.wait()  # so the forged answers reach A first
        return "B's answer"

    agent_b.on(MessageType.TASK)(answer)
    agent_a = MessagePassingAgent(a, queue_a)
    handle = await agent_a.send_task(b, "a question", wait_for_result=False, timeout=WAIT_S)
    reply_queue = (await queue_a.replies()).queue_name
    as_c = await aio_pika.connect(urls[c], timeout=10)
    try:
        channel = await as_c.channel(publisher_confirms=True)
        for sender, user_id in ((b, None), (b, c), (c, c)):  # forged; forged; not asked
            await channel.default_exchange.publish(
                aio_pika.Message(
                    json.dumps(f"{sender}'s answer, says {c}").encode(),
                    content_type=wire.CONTENT_TYPE,
                    type="result",
                    correlation_id=handle.message_id,
                    user_id=user_id,
                    headers={wire.H_SENDER: sender},
                ),
                routing_key=reply_queue,
            )
    finally:
        await as_c.close()
    release.set()
    assert await handle.result() == "B's answer"

    # The library will not send as someone else.
    with pytest.raises(InvalidMessageError, match="may not speak for"):
        await queue_a.send(Message(sender=c, recipient=b, content="forged"))

    # A, with its own credentials and a raw client, tries everything else.
    connection = await aio_pika.connect(urls[a], timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(wire.exchange_name(namespace), ensure=False)
        to_b = f"notification.2.{c}.{b}"
        forgeries: list[tuple[str, aio_pika.abc.AbstractExchange, str, dict[str, Any]]] = [
            ("no user_id", exchange, to_b, {"headers": {wire.H_SENDER: c}}),
            (
                "A's user_id, C in x-sender",
                exchange,
                to_b,
                {"user_id": a, "headers": {wire.H_SENDER: c}},
            ),
            ("A's user_id, C only in the routing key", exchange, to_b, {"user_id": a}),
            (
                "straight into the inbox",
                channel.default_exchange,
                wire.inbox_name(namespace, b),
                {"user_id": a, "headers": {wire.H_SENDER: c}},
            ),
        ]
        for what, target, key, properties in forgeries:
            await target.publish(
                aio_pika.Message(
                    json.dumps(what).encode(),
                    content_type=wire.CONTENT_TYPE,
                    priority=2,  # as the sentinel's: the inbox keeps them in order
                    message_id=f"forged: {what}",
                    **properties,
                ),
                routing_key=key,
            )
        # C's user_id on A's connection: RabbitMQ refuses it and closes the channel.
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="user_id"):
            await exchange.publish(
                aio_pika.Message(b'"forged"', user_id=c, headers={wire.H_SENDER: c}),
                routing_key=to_b,
            )
    finally:
        await connection.close()
    sentinel = Message(sender=c, recipient=b, content="after the forgeries")
    await queue_c.send(sentinel)
    await agent_b.wait_for(lambda m: m.id == sentinel.id, "the message after the forgeries")

    assert all(not m.id.startswith("forged") for m in agent_b.handled)
    assert {m.sender for m in agent_b.handled} == {a, c}
    dead = {d.message_id: d.headers or {} for d in await drain(foreign, dead_queue)}
    for what, *_ in forgeries:
        reason = dead.pop(f"forged: {what}")[wire.H_DEAD_REASON]
        assert str(reason).startswith("unauthenticated sender"), (what, reason)
    [(_, failed)] = dead.items()
    assert failed[wire.H_DEAD_REASON] == "handler failed"  # "always fail", by B
    assert failed[wire.H_SENDER] == c
    assert agent_b.attempts[once.id] == 2 and [m.id for m in agent_b.handled].count(once.id) == 1

    # The control: an agent that trusts the sender word believes the forgery.
    gullible = f"g-{suffix}"
    queue_g = await make_queue(trust_sender_word=True)
    agent_g = Recorder(gullible, queue_g)
    await agent_g.start_consuming()
    await foreign.default_exchange.publish(
        aio_pika.Message(b'"forged"', content_type=wire.CONTENT_TYPE, headers={wire.H_SENDER: c}),
        routing_key=wire.inbox_name(namespace, gullible),
    )
    assert (await agent_g.wait_for(lambda m: m.content == "forged", "the forgery")).sender == c
    await agent_g.stop()
    await agent_b.stop()


# -- scenario 16: least privilege (docs/deploy.md's permissions) -------------------------


def deploy_blocks() -> dict[str, str]:
    """The shell blocks of docs/deploy.md marked ``<!-- deploy-test: NAME -->``."""
    text = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"<!-- deploy-test: (\w+) -->\n```bash\n(.*?)```", text, re.S))
    assert set(blocks) == {"admin", "agent", "foreign_replies"}, "docs/deploy.md's blocks moved"
    return blocks


def _doc_line(block: str, prefix: str) -> str:
    """The line of a doc block that starts with ``prefix`` (a variable it defines)."""
    [line] = [line for line in block.splitlines() if line.startswith(prefix)]
    return line + "\n"


async def run_doc_script(script: str, env: dict[str, str]) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@dataclass
class Deployment:
    """Users made by docs/deploy.md's own commands, on the private node."""

    namespace: str
    urls: dict[str, str] = field(default_factory=dict)
    """Agent id (each agent's user has its id as name) -> its AMQP URL."""
    env: dict[str, str] = field(default_factory=dict)
    """The environment the doc's commands ran in."""
    users: list[str] = field(default_factory=list)
    """Every user the commands made (the admin's too): users are node-wide."""

    async def remove_users(self, broker: PrivateBroker) -> None:
        for user in self.users:
            with contextlib.suppress(BrokerError):
                await asyncio.to_thread(broker.delete_user, user)

    async def opt_in_foreign_replies(self, agent: str) -> None:
        """Run the doc's opt-in block for ``agent``: write on the default exchange."""
        blocks = deploy_blocks()
        script = (
            _doc_line(blocks["admin"], "NS_RE=")
            + _doc_line(blocks["agent"], "REPLY_RE=")
            + blocks["foreign_replies"]
        )
        await run_doc_script(script, self.env | {"AGENT": agent, "AGENT_USER": agent})


async def deploy(
    private_broker: PrivateBroker, namespace: str, bin_dir: Path, agents: Sequence[str]
) -> Deployment:
    """Run the doc's admin block, then its agent block for each agent id."""
    # The doc's commands call `rabbitmqctl`: on PATH, ours talks to the private
    # node only (its name, its cookie), never to the shared broker.
    shim = bin_dir / "rabbitmqctl"
    argv = private_broker._ctl_argv()  # [rabbitmqctl, -n, NODE, -q]
    shim.write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n')
    shim.chmod(0o755)
    passwords = {agent: uuid.uuid4().hex for agent in agents}
    admin = f"adm-{_hex()}"
    env = private_broker._env() | {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "VHOST": "/",
        "NS": namespace,
        "ADMIN_USER": admin,
        "ADMIN_PASSWORD": uuid.uuid4().hex,
    }
    blocks = deploy_blocks()
    script = blocks["admin"] + "".join(
        f"AGENT={agent} AGENT_USER={agent} AGENT_PASSWORD={passwords[agent]}\n" + blocks["agent"]
        for agent in agents
    )
    deployed = Deployment(namespace, users=[admin, *agents])
    try:
        await run_doc_script(script, env)
    except BaseException:
        await deployed.remove_users(private_broker)
        raise
    port = private_broker.amqp_port
    deployed.urls = {a: f"amqp://{a}:{passwords[a]}@127.0.0.1:{port}/" for a in agents}
    deployed.env = env
    return deployed


M_REFUSED = (
    "key as A",
    "routed as A",
    "default exchange as A",
    "default exchange as M",
    "default exchange into B's retry queue",
    "B's retry exchange",
    "replies exchange with B's key",
    "bind to B's key",
    "bind to all",
    "bind to dead letters",
    "bind to B's answers",
    "bind to all answers",
    "answers into the traffic exchange",
    "server-named queue",
    "consume B's inbox",
    "get from B's inbox",
    "purge B's inbox",
    "delete B's inbox",
    "read history",
)
"""What RabbitMQ refuses M, with docs/deploy.md's agent permissions."""
FAILING = "CC on a failing message to A"
M_LET_THROUGH = (
    "CC into B's retry queue",  # into M's own retry queue only
    "reply_to B's inbox",
    FAILING,
    "CC as A",
    "BCC as A",
)
"""What RabbitMQ lets M publish: the agents must refuse to act on it (below)."""
DEAD_LETTERED_BY = {
    "reply_to B's inbox": ("a", "reply_to"),
    FAILING: ("a", "misaddressed"),  # it carries a CC header: never run
    "CC as A": ("b", "misaddressed"),
    "BCC as A": ("b", "misaddressed"),
}
"""What got through -> (the agent that dead-letters it, the reason it gives)."""

Action = Callable[[AbstractChannel], Awaitable[object]]


@dataclass
class LeastPrivilege:
    """Scenario 16's cast on the private node, for the tests of one class.

    A and B run with docs/deploy.md's agent permissions (A as a would-be deputy, its
    handler failing on one message); M connects with the same permissions; a foreign
    client (guest) inspects queues and asks A as a client that is not amqp_agents.
    """

    namespace: str
    ids: dict[str, str]
    """"a", "b", "m" -> the agent's id (and user name)."""
    retry: RetryPolicy
    deployed: Deployment
    agent_a: FailingRecorder
    agent_b: Recorder
    m: AbstractConnection
    foreign: AbstractChannel
    reply_b: str
    """B's reply queue: M may know its name, it is the reply_to of B's requests."""

    @property
    def inbox_b(self) -> str:
        return wire.inbox_name(self.namespace, self.ids["b"])

    @property
    def retry_b(self) -> str:
        return wire.retry_queue_name(self.namespace, self.ids["b"], self.retry.delays_s[0])

    async def as_m(self, action: Action) -> BaseException | None:
        """Run ``action`` as M on a fresh channel; what it raised, if anything."""
        channel = await self.m.channel(publisher_confirms=True)
        try:
            await action(channel)
        except Exception as exc:  # judged by the tests, one attempt each
            return exc
        finally:
            with contextlib.suppress(*aio_pika.exceptions.CONNECTION_EXCEPTIONS):
                await channel.close()
        return None

    def attempts_of_m(self) -> dict[str, Action]:
        """Everything M tries, by name (the names of M_REFUSED and M_LET_THROUGH)."""
        a, b, m = self.ids["a"], self.ids["b"], self.ids["m"]
        ns = self.namespace
        ns_exchange, replies = wire.exchange_name(ns), wire.reply_exchange_name(ns)
        inbox_b, retry_b = self.inbox_b, self.retry_b
        retry_m = wire.retry_queue_name(ns, m, self.retry.delays_s[0])

        def publish(exchange: str, key: str, what: str, **properties: Any) -> Action:
            async def action(channel: AbstractChannel) -> object:
                target = (
                    channel.default_exchange
                    if exchange == ""
                    else await channel.get_exchange(exchange, ensure=False)
                )
                properties.setdefault("headers", {})
                properties["headers"].setdefault(wire.H_SENDER, m)
                properties.setdefault("user_id", m)  # M is authentic, as itself
                message = aio_pika.Message(
                    json.dumps(what).encode(),
                    content_type=wire.CONTENT_TYPE,
                    priority=2,  # as the sentinels': the inboxes keep them in order
                    message_id=what,
                    **properties,
                )
                return await target.publish(message, routing_key=key)

            return action

        async def bind(channel: AbstractChannel, exchange: str, key: str) -> None:
            mine = await channel.declare_queue(
                wire.reply_queue_name(ns, m, uuid.uuid4().hex), exclusive=True
            )
            await mine.bind(exchange, routing_key=key)

        async def bind_exchange(
            channel: AbstractChannel, destination: str, source: str, key: str
        ) -> None:
            target = await channel.get_exchange(destination, ensure=False)
            await target.bind(source, routing_key=key)

        async def ack(incoming: AbstractIncomingMessage) -> None:
            await incoming.ack()

        async def consume(channel: AbstractChannel, name: str) -> None:
            queue = await channel.get_queue(name, ensure=False)
            await queue.consume(ack)

        async def get(channel: AbstractChannel, name: str) -> None:
            queue = await channel.get_queue(name, ensure=False)
            await queue.get(no_ack=False, fail=False)

        async def purge(channel: AbstractChannel, name: str) -> None:
            queue = await channel.get_queue(name, ensure=False)
            await queue.purge()

        return {
            # Into B's inbox with another sender's key: RabbitMQ refuses.
            "key as A": publish(ns_exchange, f"notification.2.{a}.{b}", "key as A"),
            "routed as A": publish(ns_exchange, f"notification.2.{a}.-", "routed as A"),
            # The default exchange reaches any queue by name: not granted (answers and
            # retries have exchanges of their own).
            "default exchange as A": publish(
                "", inbox_b, "default exchange as A", headers={wire.H_SENDER: a}
            ),
            "default exchange as M": publish("", inbox_b, "default exchange as M"),
            "default exchange into B's retry queue": publish(
                "", retry_b, "default exchange into B's retry queue"
            ),
            # B's retry queue leads into B's inbox: only B writes to B's retry exchange,
            # and a CC routes only within the exchange M published to.
            "B's retry exchange": publish(
                wire.retry_exchange_name(ns, b), retry_b, "B's retry exchange"
            ),
            "CC into B's retry queue": publish(
                wire.retry_exchange_name(ns, m),
                retry_m,
                "CC into B's retry queue",
                headers={"CC": [retry_b], "BCC": [retry_b]},
            ),
            # The replies exchange takes only reply queue names as keys.
            "replies exchange with B's key": publish(
                replies, f"notification.2.{m}.{b}", "replies exchange with B's key"
            ),
            # Eavesdropping and consuming: RabbitMQ refuses.
            "bind to B's key": lambda ch: bind(ch, ns_exchange, f"*.*.*.{b}"),
            "bind to all": lambda ch: bind(ch, ns_exchange, "#"),
            "bind to dead letters": lambda ch: bind(ch, f"{ns}.dlx", ""),
            "bind to B's answers": lambda ch: bind(ch, replies, self.reply_b),
            "bind to all answers": lambda ch: bind(ch, replies, "#"),
            "answers into the traffic exchange": lambda ch: bind_exchange(
                ch, ns_exchange, replies, f"*.*.*.{b}"
            ),
            "server-named queue": lambda ch: ch.declare_queue(exclusive=True),
            "consume B's inbox": lambda ch: consume(ch, inbox_b),
            "get from B's inbox": lambda ch: get(ch, inbox_b),
            "purge B's inbox": lambda ch: purge(ch, inbox_b),
            "delete B's inbox": lambda ch: ch.queue_delete(inbox_b),
            "read history": lambda ch: consume(ch, wire.history_name(ns)),
            # Through A, which may write where M may not: A refuses to be the deputy.
            "reply_to B's inbox": publish(
                ns_exchange, f"request.2.{m}.{a}", "reply_to B's inbox", reply_to=inbox_b
            ),
            FAILING: publish(
                ns_exchange, f"notification.2.{m}.{a}", FAILING, headers={"CC": [inbox_b]}
            ),
            # What RabbitMQ 3.10 lets through: CC/BCC on the traffic exchange (topic
            # permissions unchecked for them before 4.0).
            **{
                f"{header} as A": publish(
                    ns_exchange,
                    f"notification.2.{m}.{m}",
                    f"{header} as A",
                    headers={header: [f"notification.2.{a}.{b}"], wire.H_SENDER: a},
                )
                for header in ("CC", "BCC")
            },
        }


@dataclass(frozen=True)
class MAttempts:
    """What became of each attempt of M, made once for the tests of the class."""

    outcomes: dict[str, BaseException | None]
    """Attempt name -> what it raised (None: RabbitMQ let it through)."""
    waiting_in_retry_b: int | None
    """Messages in B's retry queue right after M's CC into it (None: never tried)."""


@dataclass(frozen=True)
class Aftermath:
    """What A and B did with what got through, once both served a sentinel after it."""

    handled_by_b: list[tuple[str, str]]
    """(id, sender) of every message B handled."""
    sentinel_to_b: str
    waiting_in_inbox_b: int
    waiting_in_retry_b: int
    dead: list[AbstractIncomingMessage]
    """Everything in ``{ns}.dead``, drained."""

    def dead_headers(self) -> dict[str, dict[str, Any]]:
        return {str(d.message_id): dict(d.headers or {}) for d in self.dead}


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def scene(
    private_broker: PrivateBroker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LeastPrivilege]:
    """Scenario 16's cast, deployed once for :class:`TestLeastPrivilege`; all undone after."""
    suffix = _hex()
    namespace = f"lp-{suffix}"
    ids = {name: f"{name}-{suffix}" for name in ("a", "b", "m")}
    retry = RetryPolicy(max_attempts=2, delays_s=(0.05,))
    async with contextlib.AsyncExitStack() as stack:
        queues = Queues(private_broker, namespace, "test scenario 16")
        stack.push_async_callback(queues.close)
        # The admin's part (topology apply), done here by guest: exchanges, inboxes,
        # retry queues; the agents then run passive, as docs/deploy.md says.
        admin = await queues()
        topology = await admin.topology()
        for agent in ids.values():
            await admin.ensure_inbox(agent)
            await topology.declare_retry_queue(agent, retry.delays_s[0])
        bin_dir = tmp_path_factory.mktemp("bin")
        deployed = await deploy(private_broker, namespace, bin_dir, list(ids.values()))
        stack.push_async_callback(deployed.remove_users, private_broker)

        def agent_queue(agent: str) -> Awaitable[MessageQueue]:
            return queues(
                deployed.urls[agent],
                passive=True,
                reply_owner=agent,
                authenticate_senders=True,
            )

        agent_a = FailingRecorder(
            ids["a"],
            await agent_queue(ids["a"]),
            always_fail=[FAILING],
            concurrency=1,
            retry=retry,
        )
        agent_b = Recorder(ids["b"], await agent_queue(ids["b"]), concurrency=1)
        for running in (agent_a, agent_b):
            await running.start_consuming()
            stack.push_async_callback(running.stop)
        reply_b = (await agent_b.queue.replies()).queue_name
        m = await aio_pika.connect(deployed.urls[ids["m"]], timeout=10)
        stack.push_async_callback(m.close)
        foreign = await aio_pika.connect(private_broker.url, timeout=10)
        stack.push_async_callback(foreign.close)
        yield LeastPrivilege(
            namespace=namespace,
            ids=ids,
            retry=retry,
            deployed=deployed,
            agent_a=agent_a,
            agent_b=agent_b,
            m=m,
            foreign=await foreign.channel(publisher_confirms=True),
            reply_b=reply_b,
        )


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def m_attempts(scene: LeastPrivilege) -> MAttempts:
    """Every attempt of M, in order, each on a fresh channel; nothing raised here."""
    outcomes: dict[str, BaseException | None] = {}
    waiting_in_retry_b = None
    for what, action in scene.attempts_of_m().items():
        outcomes[what] = await scene.as_m(action)
        if what == "CC into B's retry queue":
            waiting_in_retry_b = await message_count(scene.foreign, scene.retry_b)
    return MAttempts(outcomes, waiting_in_retry_b)


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def aftermath(scene: LeastPrivilege, m_attempts: MAttempts) -> Aftermath:
    """Once A and B served a sentinel sent after M's messages: what they did with them."""
    a, b = scene.ids["a"], scene.ids["b"]
    agent_a, agent_b = scene.agent_a, scene.agent_b
    # A: the rest of its inbox after M's messages.
    to_a = Message(sender=b, recipient=a, content="after M, for A")
    await agent_b.queue.send(to_a)
    await agent_a.wait_for(has_id(to_a.id), "A's sentinel")
    to_b = Message(sender=a, recipient=b, content="after M, for B")
    await agent_a.queue.send(to_b)
    await agent_b.wait_for(has_id(to_b.id), "B's sentinel")
    return Aftermath(
        handled_by_b=[(msg.id, msg.sender) for msg in agent_b.handled],
        sentinel_to_b=to_b.id,
        waiting_in_inbox_b=await message_count(scene.foreign, scene.inbox_b),
        waiting_in_retry_b=await message_count(scene.foreign, scene.retry_b),
        dead=await drain(scene.foreign, f"{scene.namespace}.dead"),
    )


class TestLeastPrivilege:
    """Scenario 16. M, with docs/deploy.md's agent permissions, against B (A a deputy).

    RabbitMQ refuses: another sender's routing key, the default exchange (into B's
    inbox or B's retry queue), B's retry exchange, a key on the replies exchange that
    names no reply queue, binding anything to the traffic exchange, binding a reply
    queue to the replies exchange under another name (B's answers, every answer),
    routing the replies exchange into the traffic exchange, server-named queues,
    consuming, getting, purging or deleting B's inbox, reading history. A refuses to be
    M's deputy: a reply_to naming B's inbox, a CC header it would otherwise copy into
    its retry. A CC on M's own retry exchange reaches no queue of B's. What RabbitMQ
    3.10 still lets into B's inbox (CC and BCC copies on the traffic exchange, whose
    topic permissions it checks only from 4.0) B dead-letters as misaddressed.

    A foreign client's server-named reply queue is answered through the default
    exchange: RabbitMQ refuses A that until the doc's opt-in, and A goes on serving.

    Deploying users with the doc's commands takes a while, so the class shares one
    cast (:class:`LeastPrivilege`); M's attempts are made once (:class:`MAttempts`)
    and each is judged by a case of its own, so one failure hides no other.
    """

    def test_every_attempt_of_m_is_judged(self, m_attempts: MAttempts) -> None:
        assert sorted(m_attempts.outcomes) == sorted(M_REFUSED + M_LET_THROUGH)

    @pytest.mark.parametrize("what", M_REFUSED)
    def test_rabbitmq_refuses_m(self, m_attempts: MAttempts, what: str) -> None:
        outcome = m_attempts.outcomes[what]
        assert isinstance(outcome, aiormq.exceptions.ChannelAccessRefused), repr(outcome)
        assert "ACCESS_REFUSED" in str(outcome)

    @pytest.mark.parametrize("what", M_LET_THROUGH)
    def test_rabbitmq_lets_m_publish(self, m_attempts: MAttempts, what: str) -> None:
        assert m_attempts.outcomes[what] is None

    def test_a_cc_on_ms_retry_exchange_reaches_no_queue_of_b(self, m_attempts: MAttempts) -> None:
        assert m_attempts.waiting_in_retry_b == 0

    def test_b_handles_nothing_of_m_and_nothing_of_m_waits_for_b(
        self, scene: LeastPrivilege, aftermath: Aftermath
    ) -> None:
        assert aftermath.handled_by_b == [(aftermath.sentinel_to_b, scene.ids["a"])]
        assert aftermath.waiting_in_inbox_b == 0
        assert aftermath.waiting_in_retry_b == 0

    def test_each_dead_letter_is_there_once(self, aftermath: Aftermath) -> None:
        copies = Counter(d.message_id for d in aftermath.dead)
        assert copies.most_common(1)[0][1] == 1, "a copy too many"

    def test_only_what_got_through_is_dead_lettered(self, aftermath: Aftermath) -> None:
        assert aftermath.dead_headers().keys() == DEAD_LETTERED_BY.keys()

    @pytest.mark.parametrize("what", DEAD_LETTERED_BY)
    def test_what_got_through_is_dead_lettered_by_its_agent_with_the_reason(
        self, scene: LeastPrivilege, aftermath: Aftermath, what: str
    ) -> None:
        by, reason = DEAD_LETTERED_BY[what]
        headers = aftermath.dead_headers()[what]
        assert headers[wire.H_DEAD_AGENT] == scene.ids[by], what
        assert str(headers[wire.H_DEAD_REASON]).startswith(reason), headers

    def test_as_copies_do_not_carry_ms_cc(self, aftermath: Aftermath) -> None:
        assert "CC" not in aftermath.dead_headers()[FAILING], "A's copies must not carry M's CC"

    def test_a_never_runs_a_message_with_a_cc_header(
        self, scene: LeastPrivilege, aftermath: Aftermath
    ) -> None:
        assert scene.agent_a.attempts[FAILING] == 0

    @pytest.mark.asyncio(loop_scope="class")
    async def test_a_foreign_reply_queue_is_not_answered_before_the_opt_in(
        self, scene: LeastPrivilege, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A foreign client (guest) names a server-named queue as reply_to: A answers
        it through the default exchange, which RabbitMQ refuses A without the opt-in.

        Runs before the opt-in test (class order): the opt-in stays for the class.
        """
        answers = await self._foreign_asks(scene, "foreign, before the opt-in")
        sentinel = Message(sender=scene.ids["b"], recipient=scene.ids["a"], content="after it")
        await scene.agent_b.queue.send(sentinel)
        await scene.agent_a.wait_for(has_id(sentinel.id), "A's sentinel after the request")
        assert any(msg.id == "foreign, before the opt-in" for msg in scene.agent_a.handled)
        assert answers.empty(), "answered through the default exchange without permission"
        agent_warnings = [r.getMessage() for r in caplog.records if r.name == "amqp_agents.agent"]
        assert any(
            "not delivered" in text and "ACCESS_REFUSED" in text and "amq.default" in text
            for text in agent_warnings
        ), agent_warnings

    @pytest.mark.asyncio(loop_scope="class")
    async def test_a_foreign_reply_queue_is_answered_after_the_opt_in(
        self, scene: LeastPrivilege
    ) -> None:
        await scene.deployed.opt_in_foreign_replies(scene.ids["a"])
        answers = await self._foreign_asks(scene, "foreign, after the opt-in")
        answer = await asyncio.wait_for(answers.get(), WAIT_S)
        assert (answer.correlation_id, answer.user_id) == (
            "foreign, after the opt-in",
            scene.ids["a"],
        )

    @staticmethod
    async def _foreign_asks(
        scene: LeastPrivilege, what: str
    ) -> asyncio.Queue[AbstractIncomingMessage]:
        """Guest sends A a request whose reply_to is a server-named queue; its answers."""
        gen_queue = await scene.foreign.declare_queue(exclusive=True)
        assert gen_queue.name.startswith("amq.gen-")
        answers: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await gen_queue.consume(answers.put, no_ack=True)
        traffic = await scene.foreign.get_exchange(
            wire.exchange_name(scene.namespace), ensure=False
        )
        await traffic.publish(
            aio_pika.Message(
                json.dumps(what).encode(),
                content_type=wire.CONTENT_TYPE,
                type="request",
                priority=2,
                message_id=what,
                user_id="guest",
                reply_to=gen_queue.name,
                headers={wire.H_SENDER: "guest"},
            ),
            routing_key=f"request.2.guest.{scene.ids['a']}",
        )
        return answers


# -- scenario 17: revoked credentials ----------------------------------------------------


class RefusalCount(logging.Handler):
    """Counts aio-pika's "connection attempt failed: ACCESS_REFUSED" lines for one user."""

    def __init__(self, user: str, enough: int) -> None:
        super().__init__()
        self.user, self.enough = user, enough
        self.count = 0
        self.reached = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if f"//{self.user}:" in text and "ACCESS_REFUSED" in text:
            self.count += 1
            if self.count >= self.enough:
                self.reached.set()


async def test_revoked_credentials_end_in_a_fatal_error_after_bounded_attempts(
    make_user: UserFactory, make_queue: QueueFactory, private_broker: PrivateBroker
) -> None:
    suffix = _hex()
    agent_id, other = f"r-{suffix}", f"p-{suffix}"
    urls = {user: await make_user(user) for user in (agent_id, other)}
    queue = await make_queue(urls[agent_id], max_refused_reconnects=3)
    connection = queue.connection
    assert isinstance(connection, AgentConnection)
    agent = Recorder(agent_id, queue)
    await agent.start_consuming()
    running = asyncio.create_task(agent.start())  # returns or raises when the agent ends
    hello = Message(sender=agent_id, recipient=agent_id, content="hello")
    await queue.send(hello)
    await agent.wait_for(has_id(hello.id), "the agent's first message")
    # The control: aio-pika's own robust connection, as another user deleted too.
    plain = await aio_pika.connect_robust(urls[other], reconnect_interval=0.1)
    plain_refusals = RefusalCount(other, enough=10)
    aio_pika_log = logging.getLogger("aio_pika.robust_connection")
    aio_pika_log.addHandler(plain_refusals)
    try:
        loop = asyncio.get_running_loop()
        revoked_at = loop.time()
        for user in (agent_id, other):
            await asyncio.to_thread(private_broker.delete_user, user)  # closes its links

        with pytest.raises(BrokerConnectionError, match="refused our credentials"):
            await asyncio.wait_for(running, WAIT_S)
        gave_up_after = loop.time() - revoked_at
        assert connection.refusals == 3
        assert isinstance(queue.failure, BrokerConnectionError)
        assert not agent.running
        await asyncio.wait_for(connection.closed(), WAIT_S)  # so no attempt follows
        assert gave_up_after < 3 * (queue.reconnect_interval_s + 1.0), gave_up_after
        with pytest.raises(BrokerConnectionError, match="refused our credentials"):
            await asyncio.wait_for(queue.send(hello), WAIT_S)

        await asyncio.wait_for(plain_refusals.reached.wait(), WAIT_S)
        assert not plain.is_closed, "aio-pika alone would give up too?"
    finally:
        aio_pika_log.removeHandler(plain_refusals)
        await plain.close()


# -- scenario 18: secrets ----------------------------------------------------------------


class EveryRecord(logging.Handler):
    """Every log record of every logger, formatted with its traceback if any."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def every_record() -> Iterator[EveryRecord]:
    """Capture all records (DEBUG included: aiormq, aio-pika, amqp_agents, asyncio)."""
    handler = EveryRecord()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def error_text(exc: BaseException) -> str:
    """An error as anyone could see it: message, repr, args, traceback, and every
    exception it chains to, suppressed context included."""
    parts, seen = [], set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        parts += [str(current), repr(current), repr(current.args)]
        parts += traceback.format_exception(current)
        todo += [current.__cause__, current.__context__]
    return "\n".join(parts)


CONFIG_YAML = """
broker:
  url: {scheme}://{user}:${{AMQP_PASSWORD}}@127.0.0.1:{port}/
  namespace: {namespace}
{{extra}}
agents:
  - id: {agent}
    class: amqp_agents.agent:MessagePassingAgent
"""


async def test_a_password_from_the_environment_appears_in_no_log_repr_or_error(
    make_user: UserFactory,
    private_broker: PrivateBroker,
    namespace: str,
    tmp_path: Path,
    every_record: EveryRecord,
) -> None:
    agent_id = f"s-{_hex()}"
    token = uuid.uuid4().hex
    password = f"pw/{token}+!"  # percent-encoded in the URL: both forms must stay hidden
    env_value = quote(password, safe="")
    await make_user(agent_id)
    await asyncio.to_thread(private_broker.ctl, "change_password", agent_id, password)
    closed_port = _free_port()
    seen: list[str] = []

    def config_file(
        name: str, *, port: int = private_broker.amqp_port, extra: str = "", scheme: str = "amqp"
    ) -> Path:
        path = tmp_path / f"{name}.yaml"
        text = CONFIG_YAML.format(
            scheme=scheme, user=agent_id, port=port, namespace=namespace, agent=agent_id
        )
        path.write_text(text.replace("{extra}", extra), encoding="utf-8")
        return path

    def load(path: Path, secret: str = env_value) -> AgentsConfig:
        return load_config(path, env={"AMQP_PASSWORD": secret})

    # Validation errors, the URL loaded but another field wrong.
    for name, extra in (
        ("bad-field", "  prefetch: -1"),
        ("unknown-field", "  passwd: x"),
        ("tls-needs-amqps", "  tls: {verify: false}"),
    ):
        with pytest.raises(ConfigError) as refused:
            load(config_file(name, extra=extra))
        seen.append(error_text(refused.value))
    with pytest.raises(ConfigError) as refused:
        load(config_file("bad-scheme", scheme="http"))
    seen.append(error_text(refused.value))

    # Start and stop, with every repr on the way.
    config = load(config_file("good"))
    assert quote(password, safe="") in (config.broker.secret_url() or "")
    runner = prepare(config)
    await runner.start()
    seen += [repr(config), str(config), repr(config.broker), config.broker.model_dump_json()]
    seen += [repr(runner), repr(runner.queue), repr(runner.queue.connection)]
    seen += [repr(agent) for agent in runner.agents]
    hello = Message(sender="s", recipient=agent_id, content="hello")
    await runner.queue.send(hello)
    await runner.stop()

    # Failures: a wrong password, an unreachable broker, credentials revoked mid-run.
    for failing in (
        prepare(load(config_file("wrong"), secret=env_value + "x")),
        prepare(load(config_file("unreachable", port=closed_port))),
    ):
        with pytest.raises(BrokerConnectionError) as failed:
            await failing.start()
        seen.append(error_text(failed.value))
    revoked = prepare(load(config_file("revoked")))
    revoked.queue.max_refused_reconnects = 2
    await revoked.start()
    await asyncio.to_thread(private_broker.delete_user, agent_id)
    failure = await asyncio.wait_for(revoked.queue.wait_failed(), WAIT_S)
    seen.append(error_text(failure))
    with pytest.raises(BrokerConnectionError) as failed:
        await revoked.queue.send(hello)
    seen.append(error_text(failed.value))
    await revoked.stop()

    assert any("ACCESS_REFUSED" in line for line in every_record.lines), "logs were captured"
    everything = "\n".join(seen + every_record.lines)
    assert agent_id in everything  # the user name is no secret, and shows
    for form in (token, password, env_value):
        assert form not in everything, f"the password leaked ({form!r})"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
