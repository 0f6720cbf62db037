"""RetryPolicy: how often and how late a failed handler is retried; the one place for it.

Agents retry by it, the YAML ``retry:`` section builds it, and the broker layout
derives each agent's retry queues from :meth:`RetryPolicy.distinct_delays`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how late a failed handler is retried.

    ``max_attempts`` counts the first try; ``delays_s[i]`` is the wait before retry
    ``i + 1`` (the last delay repeats). The default gives up after about 1.2 s, so a
    requester waiting with ``send_task`` learns of a persistent failure in seconds.
    """

    max_attempts: int = 3
    delays_s: tuple[float, ...] = (0.2, 1.0)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts counts the first try: it must be at least 1")
        if any(delay < 0 for delay in self.delays_s):
            raise ValueError("retry delays cannot be negative")
        if self.max_attempts > 1 and not self.delays_s:
            raise ValueError("delays_s needs at least one delay when max_attempts > 1")

    def delay_before(self, attempt: int) -> float:
        """Delay before running attempt number ``attempt`` (2 for the first retry)."""
        return self.delays_s[min(attempt - 2, len(self.delays_s) - 1)]

    def distinct_delays(self) -> list[float]:
        """The delays this policy actually retries after, each once, in order of use.

        ``RetryPolicy(max_attempts=4, delays_s=(1, 5)).distinct_delays() -> [1.0, 5.0]``;
        ``RetryPolicy(max_attempts=1).distinct_delays() -> []`` (no retry queue needed).
        """
        delays = (self.delay_before(attempt) for attempt in range(2, self.max_attempts + 1))
        return list(dict.fromkeys(float(d) for d in delays))
