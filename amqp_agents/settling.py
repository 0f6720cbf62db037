"""Settling a delivery: admit it, dead-letter it or park it for a retry.

The consumer-side half of :class:`client.BrokerClient`, kept apart so that the façade
stays a list of parts: a delivery goes through :meth:`Settling.admit`
(:func:`admission.admit` decides, a refusal is carried out here) and ends in the
handler's outcome (outcomes.py), which settles it with :meth:`Settling.dead_letter` or
:meth:`Settling.retry_later` (both :mod:`redelivery`: a confirmed copy first, the ack
only then).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Protocol

from . import redelivery
from .admission import DeadLetter, Gate, Skip, Verdict, admit
from .inbound import Inbound
from .publish import Publisher
from .routing import MessageRouter
from .senders import SenderPolicy
from .topology import Topology


class _Host(Protocol):
    """What settling needs of the client it is mixed into."""

    namespace: str
    senders: SenderPolicy
    max_body_bytes: int
    router: MessageRouter | None

    @property
    def publisher(self) -> Publisher: ...

    async def topology(self) -> Topology: ...


class Settling:
    """The methods a consumer of an inbox calls on its :class:`client.BrokerClient`."""

    async def admit(
        self: _Host,
        incoming: Inbound,
        agent_id: str,
        *,
        handling: bool = False,
        seen: Container[str] = (),
    ) -> Verdict:
        """Decide on a delivery to ``agent_id`` (:func:`admission.admit`) and carry out a
        refusal: dead-letter it, or acknowledge a skipped one. An Admit is the caller's."""
        gate = Gate(self.namespace, agent_id, self.senders, self.max_body_bytes, self.router)
        verdict = admit(incoming, gate, handling=handling, seen=seen)
        if isinstance(verdict, DeadLetter):
            await redelivery.dead_letter(
                self.publisher,
                incoming,
                reason=verdict.reason,
                agent_id=agent_id,
                error=verdict.error,
            )
        elif isinstance(verdict, Skip):
            await incoming.ack()
        return verdict

    async def dead_letter(
        self: _Host,
        incoming: Inbound,
        *,
        reason: str,
        agent_id: str,
        error: BaseException | None = None,
        attempts: int | None = None,
    ) -> None:
        """Move a delivery to ``{ns}.dead`` with headers saying why, then ack it
        (see :func:`redelivery.dead_letter`)."""
        await redelivery.dead_letter(
            self.publisher,
            incoming,
            reason=reason,
            agent_id=agent_id,
            error=error,
            attempts=attempts,
        )

    async def retry_later(
        self: _Host,
        incoming: Inbound,
        *,
        agent_id: str,
        delay_s: float,
        attempt: int,
    ) -> None:
        """Park a delivery in the agent's retry queue for ``delay_s``, then ack it."""
        await redelivery.retry_later(
            self.publisher,
            await self.topology(),
            incoming,
            agent_id=agent_id,
            delay_s=delay_s,
            attempt=attempt,
        )
