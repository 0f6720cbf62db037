"""The pure parts of a task's life: A2A states from answers, the update log, typed
payloads, skills on a card, the demo's pieces."""

from __future__ import annotations

import asyncio
import doctest
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from amqp_agents import (
    Message,
    MessageType,
    PayloadError,
    TaskState,
    cancellation,
    demo,
    payloads,
    task_state,
    wire,
)
from amqp_agents.cards import skills_of
from amqp_agents.payloads import Validating, model_of, typed
from amqp_agents.task_state import TaskLog, chunk_of, state_of


@pytest.mark.parametrize(
    ("msg_type", "metadata", "state"),
    [
        ("status", {}, TaskState.WORKING),
        ("status", {"task_state": "working"}, TaskState.WORKING),
        ("status", {"task_state": "input-required"}, TaskState.INPUT_REQUIRED),
        ("status", {"task_state": "completed"}, TaskState.WORKING),  # a status never ends it
        ("status", {"chunk": 3}, TaskState.WORKING),
        ("result", {}, TaskState.COMPLETED),
        ("response", {}, TaskState.COMPLETED),
        ("error", {}, TaskState.FAILED),
        ("error", {"task_state": "canceled"}, TaskState.CANCELED),
        ("error", {"task_state": "rejected"}, TaskState.REJECTED),
        ("error", {"task_state": "working"}, TaskState.FAILED),  # an error always ends it
        ("task", {}, TaskState.SUBMITTED),
    ],
)
def test_the_state_an_answer_puts_a_task_in(
    msg_type: str, metadata: dict[str, Any], state: TaskState
) -> None:
    assert state_of(Message(type=MessageType(msg_type), metadata=metadata)) is state


@pytest.mark.parametrize(
    ("msg_type", "metadata", "chunk"),
    [
        ("status", {"chunk": 0}, 0),
        ("status", {"chunk": 7}, 7),
        ("status", {"chunk": True}, None),
        ("status", {"chunk": "1"}, None),
        ("result", {"chunk": 1}, None),
        ("status", {}, None),
    ],
)
def test_a_partial_result_is_a_status_with_a_whole_chunk_number(
    msg_type: str, metadata: dict[str, Any], chunk: int | None
) -> None:
    assert chunk_of(Message(type=MessageType(msg_type), metadata=metadata)) == chunk


@pytest.mark.parametrize("state", list(TaskState))
def test_final_states_are_the_four_ends(state: TaskState) -> None:
    assert state.final == (state.value in {"completed", "failed", "canceled", "rejected"})


async def test_a_late_follower_gets_every_update_and_nothing_after_the_final() -> None:
    log = TaskLog()
    followed: list[Any] = []

    async def follow() -> None:
        async for update in log.follow():
            followed.append(update.content)

    early = asyncio.ensure_future(follow())
    log.add(Message(type=MessageType.STATUS, content="a", metadata={"chunk": 0}))
    await asyncio.sleep(0)
    log.add(Message(type=MessageType.STATUS, content="b", metadata={"chunk": 1}))
    log.add(Message(type=MessageType.RESULT, content="done"))
    log.add(Message(type=MessageType.STATUS, content="late"))  # after the end: ignored
    async with asyncio.timeout(5):
        await early
    late = [u.content async for u in log.follow()]
    assert followed == late == ["a", "b", "done"]
    assert log.state is TaskState.COMPLETED


async def test_ending_a_log_releases_its_followers() -> None:
    log = TaskLog()
    follower = asyncio.ensure_future(asyncio.wait_for(_drain(log), 5))
    await asyncio.sleep(0)
    log.end(TaskState.FAILED)
    assert await follower == []
    assert log.state is TaskState.FAILED


async def _drain(log: TaskLog) -> list[Any]:
    return [u async for u in log.follow()]


class Article(BaseModel):
    topic: str
    words: int


async def _typed(article: Article) -> int:
    return article.words


async def _plain(message: Message) -> Any:
    return message.content


async def _untyped(x) -> Any:  # type: ignore[no-untyped-def]
    return x


@pytest.mark.parametrize(
    ("handler", "model"), [(_typed, Article), (_plain, None), (_untyped, None)]
)
def test_a_handler_annotated_with_a_model_is_typed(handler: Any, model: Any) -> None:
    assert model_of(handler) is model


@pytest.mark.parametrize(
    ("content", "fields"),
    [
        ({"topic": "x"}, ["'words': Field required"]),
        ({"topic": "x", "words": "many"}, ["'words': Input should be a valid integer"]),
        ({}, ["'topic': Field required", "'words': Field required"]),
        ("text", ["Input should be a valid dictionary"]),
    ],
)
async def test_a_payload_that_does_not_fit_names_the_fields(
    content: Any, fields: list[str]
) -> None:
    handler = typed(_typed, None)
    assert isinstance(handler, Validating)
    with pytest.raises(PayloadError) as refused:
        await handler(Message(content=content))
    for field in fields:
        assert field in str(refused.value)


async def test_a_payload_that_fits_reaches_the_handler_as_the_model() -> None:
    got = await typed(_untyped, Article)(Message(content={"topic": "x", "words": "3"}))
    assert got == Article(topic="x", words=3)
    assert typed(_plain, None) is _plain


def test_a_card_lists_each_type_with_its_schema() -> None:
    skills = skills_of({MessageType.TASK: typed(_typed, None), MessageType.REQUEST: _plain})
    assert [(s.message_type, s.input_schema) for s in skills] == [
        ("task", Article.model_json_schema()),
        ("request", None),
    ]


@pytest.mark.parametrize("module", [task_state, payloads, demo], ids=lambda m: m.__name__)
def test_the_doctests(module: ModuleType) -> None:
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize(
    ("deadline_in", "held_in"),
    [
        (timedelta(hours=1), timedelta(hours=1)),
        (timedelta(hours=48), timedelta(seconds=wire.MAX_TASK_DEADLINE_S)),
    ],
    ids=["within", "capped"],
)
def test_an_agent_holds_a_task_at_most_the_longest_deadline(
    deadline_in: timedelta, held_in: timedelta
) -> None:
    sent = datetime(2026, 1, 1, tzinfo=UTC)
    headers = {wire.H_DEADLINE_US: wire.to_us(sent + deadline_in)}
    assert wire.held_deadline(headers, sent) == sent + held_in
    assert wire.held_deadline({}, sent) is None


def test_the_cancel_replay_starts_before_the_oldest_task_that_may_run() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    window = timedelta(seconds=wire.MAX_TASK_DEADLINE_S + cancellation.CLOCK_SKEW_S)
    assert cancellation.replay_start(now) == now - window
