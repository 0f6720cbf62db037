"""The README's example test ("Testing your agents"), run as written; the README must
show this file's code below the marker line, unchanged (the last test here)."""

# README example starts here
from typing import Any

from amqp_agents import MessagePassingAgent, MessageQueue, RetryPolicy
from amqp_agents.testing import VirtualClock, dead_letters, running


class Researcher(MessagePassingAgent):
    failures = 1  # the first try fails: a flaky source

    async def _process_task(self, task: str, context: dict[str, Any]) -> Any:
        if Researcher.failures:
            Researcher.failures -= 1
            raise ConnectionError("source unavailable")
        return f"notes on {task}"


async def test_a_failed_task_is_retried(
    memory_queue: MessageQueue, virtual_clock: VirtualClock
) -> None:
    researcher = Researcher("researcher", memory_queue, retry=RetryPolicy(3, (60.0,)))
    boss = MessagePassingAgent("boss", memory_queue)
    async with running(researcher) as probe:
        notes = await boss.send_task("researcher", "queues", timeout=300)
    assert notes == "notes on queues"
    assert [handled.error is None for handled in probe.handled] == [False, True]
    assert virtual_clock.elapsed_s >= 60  # the retry's delay, in no real time
    assert await dead_letters(memory_queue) == []


# README example ends here


def test_the_readme_shows_this_example() -> None:
    from pathlib import Path

    root = Path(__file__).parents[2]
    code = Path(__file__).read_text(encoding="utf-8")
    example = code.split("# README example starts here\n")[1].split("# README example ends")[0]
    example = example.rstrip() + "\n"
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert f"```python\n{example}```" in readme
