"""Count like Jepsen: per message id, what was attempted, confirmed and delivered.

A fault scenario records every event through one :class:`Ledger`:

* ``attempt(id)`` before each publish call (retries of the same id included);
* ``confirmed(id, ...)`` when that call returned (the broker confirmed);
* ``failed(id, error, ...)`` when it raised;
* ``delivered(id)`` each time a handler finished with the message;
* ``dead_lettered(id)`` when it was found in the dead-letter queue instead.

Then :meth:`Ledger.report` checks the history against the guarantees::

    lost        confirmed, neither delivered nor dead-lettered  (must be 0)
    unexpected  delivered, never attempted                      (must be 0)
    duplicated  extra deliveries of a delivered id  (allowed: at-least-once; counted)
    recovery    first confirm of a publish *begun* after the fault, minus the fault
                time (or, for faults on the consumer side, the first delivery after it)
    stall       the longest gap between consecutive confirms, or between consecutive
                deliveries, whichever is longer: how long one side made no progress

Pure bookkeeping: no broker, no sleeping. Waiting for a condition (``wait_for``) is
event-driven: every record wakes the waiters, who re-check their predicate.

Results go to ``results/latest.json`` (one row per scenario, merged by name, so the
suites of several engineers can add rows); ``python tests/reliability/report.py``
turns them into the table of docs/reliability.md. The file is run output, ignored by
git: a test run leaves the checkout clean, and the page's table is the committed record.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = ["RESULTS_PATH", "Ledger", "Report", "write_result"]

RESULTS_PATH = Path(__file__).parent / "results" / "latest.json"


@dataclass(frozen=True)
class Report:
    """What one scenario did to its messages. Counts are over distinct message ids."""

    scenario: str
    n: int
    attempted: int
    confirmed: int
    delivered: int
    dead_lettered: int
    lost: int
    unexpected: int
    duplicated: int
    """Deliveries beyond the first, summed over ids (3 deliveries of one id count 2)."""
    recovery_ms: float | None
    """Fault -> first confirmed publish begun after it (or first delivery after it, see
    ``recovery_of``); None without a fault."""
    recovery_of: str
    canary_ms: float | None
    """End of the fault -> the canary's delivery."""
    send_errors: dict[str, int]
    """Exception class name -> how many publish calls raised it."""
    max_send_s: float
    """The longest single publish call, confirmed or raised."""
    stall_s: float | None = None
    """The longest gap between consecutive confirms or between consecutive deliveries
    (:meth:`Ledger.longest_stall`); None with fewer than two of each."""
    lost_ids: list[str] = field(default_factory=list)
    unexpected_ids: list[str] = field(default_factory=list)
    note: str = ""

    def summary(self) -> str:
        """One line for logs and assertion messages."""
        rec = "-" if self.recovery_ms is None else f"{self.recovery_ms:.0f}ms ({self.recovery_of})"
        return (
            f"{self.scenario}: n={self.n} attempted={self.attempted} "
            f"confirmed={self.confirmed} delivered={self.delivered} "
            f"dead_lettered={self.dead_lettered} lost={self.lost} "
            f"unexpected={self.unexpected} duplicated={self.duplicated} recovery={rec} "
            f"errors={self.send_errors} max_send={self.max_send_s:.2f}s "
            f"stall={'-' if self.stall_s is None else f'{self.stall_s:.2f}s'} "
            f"lost_ids={self.lost_ids[:5]} unexpected_ids={self.unexpected_ids[:5]}"
        )


class Ledger:
    """The history of one scenario's messages; see the module docstring."""

    def __init__(self, scenario: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.scenario = scenario
        self.clock = clock
        self.attempts: Counter[str] = Counter()
        self.confirms: dict[str, float] = {}
        """id -> time its first confirmed publish call returned."""
        self.deliveries: Counter[str] = Counter()
        self.dead_letters: Counter[str] = Counter()
        self.send_errors: Counter[str] = Counter()
        self.max_send_s = 0.0
        self.fault_at: float | None = None
        self.fault_end: float | None = None
        self._confirm_calls: list[tuple[float, float]] = []
        self._delivered_at: dict[str, float] = {}
        self._delivery_times: list[float] = []
        self._changed = asyncio.Event()

    # -- recording --------------------------------------------------------------------

    def attempt(self, message_id: str) -> float:
        """Record a publish attempt; returns its start time (pass it back below)."""
        self.attempts[message_id] += 1
        return self.clock()

    def confirmed(self, message_id: str, started_at: float) -> None:
        """The publish call begun at ``started_at`` returned: the broker has it."""
        now = self.clock()
        self._took(now - started_at)
        self.confirms.setdefault(message_id, now)
        self._confirm_calls.append((started_at, now))
        self._wake()

    def failed(self, message_id: str, error: BaseException, started_at: float) -> None:
        """The publish call begun at ``started_at`` raised ``error``."""
        self._took(self.clock() - started_at)
        self.send_errors[type(error).__name__] += 1
        self._wake()

    def delivered(self, message_id: str) -> None:
        """A handler finished with ``message_id`` (once per handler run)."""
        now = self.clock()
        self.deliveries[message_id] += 1
        self._delivered_at.setdefault(message_id, now)
        self._delivery_times.append(now)
        self._wake()

    def dead_lettered(self, message_id: str) -> None:
        """``message_id`` was found in the dead-letter queue."""
        self.dead_letters[message_id] += 1
        self._wake()

    def touch(self) -> None:
        """Wake the waiters of :meth:`wait_for`: something they look at changed."""
        self._wake()

    def fault(self, at: float | None = None) -> None:
        """Mark the moment the fault hit (default: now)."""
        self.fault_at = self.clock() if at is None else at

    def fault_over(self, at: float | None = None) -> None:
        """Mark the moment the fault ended (broker back, proxy released; default: now)."""
        self.fault_end = self.clock() if at is None else at

    # -- waiting ----------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds; it is re-checked after every record.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def wait_delivered(self, ids: Iterable[str], timeout: float) -> None:
        """Wait until each of ``ids`` was delivered at least once."""
        wanted = set(ids)
        await self.wait_for(lambda: wanted.issubset(self.deliveries), timeout)

    def delivered_at(self, message_id: str) -> float | None:
        """When ``message_id`` was first delivered, if it was."""
        return self._delivered_at.get(message_id)

    def confirmed_before(self, at: float) -> int:
        """How many publish calls had been confirmed by ``at``."""
        return sum(1 for _, end in self._confirm_calls if end <= at)

    def longest_stall(self, until: float | None = None) -> float | None:
        """The longest gap between consecutive confirms or consecutive deliveries.

        Both sides separately: a sender whose sends keep being confirmed does not hide
        an agent that stopped handling, and the reverse. ``until`` ends the window:
        later events do not count (a canary sent after an idle pause is no stall), and
        the time from the last delivery to it does (an agent that stopped for good).
        None until one side has two events.
        """
        confirms = sorted(end for _, end in self._confirm_calls)
        deliveries = list(self._delivery_times)
        if until is not None:
            confirms = [at for at in confirms if at <= until]
            deliveries = [at for at in deliveries if at <= until] + [until]
        gaps = [
            later - earlier
            for times in (confirms, deliveries)
            for earlier, later in itertools.pairwise(times)
        ]
        return max(gaps, default=None)

    def undelivered(self) -> set[str]:
        """Confirmed ids neither delivered nor dead-lettered (yet)."""
        return self.confirms.keys() - self.deliveries.keys() - self.dead_letters.keys()

    # -- the verdict ------------------------------------------------------------------

    def report(
        self,
        n: int,
        *,
        canary: str | None = None,
        note: str = "",
        recovery_of: Literal["publish", "delivery", "consumer"] = "publish",
        recovery_ms: float | None = None,
        stall_until: float | None = None,
    ) -> Report:
        """Check the recorded history; ``n`` is the scenario's workload size.

        ``recovery_of="delivery"`` measures recovery to the first delivery after the
        fault, for faults that do not touch publishing (an agent's process, channel or
        inbox); ``"consumer"`` takes ``recovery_ms`` as measured by the caller (from the
        agent noticing to the agent consuming again). ``stall_until``: see
        :meth:`longest_stall`.
        """
        lost = sorted(self.undelivered())
        seen = self.deliveries.keys() | self.dead_letters.keys()
        unexpected = sorted(seen - self.attempts.keys())
        if recovery_ms is None and self.fault_at is not None and recovery_of != "consumer":
            fault_at = self.fault_at
            if recovery_of == "publish":
                after = [end for start, end in self._confirm_calls if start >= fault_at]
            else:
                after = [at for at in self._delivery_times if at >= fault_at]
            if after:
                recovery_ms = (min(after) - fault_at) * 1000
        canary_ms = None
        if canary is not None and self.fault_end is not None:
            at = self.delivered_at(canary)
            if at is not None:
                canary_ms = (at - self.fault_end) * 1000
        return Report(
            scenario=self.scenario,
            n=n,
            attempted=len(self.attempts),
            confirmed=len(self.confirms),
            delivered=len(self.deliveries),
            dead_lettered=len(self.dead_letters),
            lost=len(lost),
            unexpected=len(unexpected),
            duplicated=sum(count - 1 for count in self.deliveries.values()),
            recovery_ms=recovery_ms,
            recovery_of=recovery_of,
            canary_ms=canary_ms,
            send_errors=dict(sorted(self.send_errors.items())),
            max_send_s=self.max_send_s,
            stall_s=self.longest_stall(stall_until),
            lost_ids=lost[:20],
            unexpected_ids=unexpected[:20],
            note=note,
        )

    def _took(self, seconds: float) -> None:
        self.max_send_s = max(self.max_send_s, seconds)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def write_result(report: Report, path: Path = RESULTS_PATH) -> None:
    """Merge ``report`` into the results file, keyed by its scenario name.

    Rows of other scenarios (other test modules, other engineers) are kept.
    """
    rows: dict[str, Any] = {}
    if path.exists():
        try:
            rows = json.loads(path.read_text())
        except ValueError:
            rows = {}
    row = asdict(report)
    row["recorded_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    for key in ("recovery_ms", "canary_ms", "max_send_s", "stall_s"):
        value = row[key]
        if isinstance(value, float) and math.isfinite(value):
            row[key] = round(value, 3 if key in ("max_send_s", "stall_s") else 1)
    rows[report.scenario] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(sorted(rows.items())), indent=2) + "\n")
    tmp.replace(path)
