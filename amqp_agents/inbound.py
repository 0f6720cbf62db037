"""What the library reads and does with a delivery, whichever reader assembled it.

An agent's inbox and a requester's replies are read by the frame switch
(``_delivery_tap.Delivery``); the pull API and the control streams get aio-pika's
``IncomingMessage``. Both have these members, so admission, outcomes and
redelivery take either.
"""

from __future__ import annotations

from typing import Any, Protocol

import aiormq.abc

from .wire.codec import IncomingLike


class Inbound(IncomingLike, Protocol):
    """A delivery: its properties (:class:`wire.codec.IncomingLike`), the broker-checked
    ``user_id``, and how to settle it."""

    @property
    def reply_to(self) -> str | None: ...
    @property
    def expiration(self) -> Any: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def delivery_tag(self) -> int | None: ...
    @property
    def exchange(self) -> str | None: ...
    @property
    def redelivered(self) -> bool | None: ...
    @property
    def channel(self) -> aiormq.abc.AbstractChannel: ...

    async def ack(self, multiple: bool = False) -> None: ...
    async def nack(self, multiple: bool = False, requeue: bool = True) -> None: ...
    async def reject(self, requeue: bool = False) -> None: ...


__all__ = ["Inbound"]
