"""Typed payloads: a handler that takes a pydantic model gets the content validated.

``@agent.on(MessageType.TASK, model=Article)``, or a handler whose first parameter is
annotated with a model (``async def write(article: Article)``), receives the message's
content as that model. Content that does not fit is refused before the handler runs:
:class:`~amqp_agents.errors.PayloadError`, whose text names each field at fault, reaches
the requester at once as a RemoteError (task state "rejected"), and the message is
acknowledged: not retried, not dead-lettered (outcomes.py).

The model's JSON schema is what the agent's card says the skill accepts (cards.py).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import PayloadError
from .message import Message

Handler = Callable[[Message], Awaitable[Any]]


def model_of(handler: Callable[..., Any]) -> type[BaseModel] | None:
    """The pydantic model the handler's first parameter is annotated with, if any
    (a :class:`Message` annotation is the plain form, not a model)."""
    try:
        hints = typing.get_type_hints(handler)
        first = next(iter(inspect.signature(handler).parameters.values()), None)
    except (NameError, TypeError, ValueError):
        return None
    hint = hints.get(first.name) if first is not None else None
    if isinstance(hint, type) and issubclass(hint, BaseModel) and not issubclass(hint, Message):
        return hint
    return None


def describe(error: ValidationError) -> str:
    """A validation error as one line naming each field at fault.

    >>> class A(BaseModel):
    ...     words: int
    >>> try:
    ...     A.model_validate({"words": "many"})
    ... except ValidationError as exc:
    ...     print(describe(exc))
    field 'words': Input should be a valid integer, unable to parse string as an integer
    """
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        parts.append(f"field {where!r}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(parts)


class Validating:
    """A handler behind a check of the content against ``model`` (see the module).

    Calling it raises :class:`PayloadError` when the content does not fit.
    """

    def __init__(self, handler: Callable[[Any], Awaitable[Any]], model: type[BaseModel]) -> None:
        self.handler = handler
        self.model = model
        self.__doc__ = handler.__doc__

    async def __call__(self, message: Message) -> Any:
        try:
            payload = self.model.model_validate(message.content)
        except ValidationError as exc:
            raise PayloadError(f"{self.model.__name__} payload refused: {describe(exc)}") from None
        return await self.handler(payload)


def typed(handler: Callable[..., Awaitable[Any]], model: type[BaseModel] | None) -> Handler:
    """``handler`` as registered: validating when a model is given or annotated."""
    model = model or model_of(handler)
    return handler if model is None else Validating(handler, model)
