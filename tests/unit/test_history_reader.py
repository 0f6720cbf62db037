"""Where a client's history settings send its queries, checked before any connection."""

from __future__ import annotations

import pytest

from amqp_agents import MessageQueue
from amqp_agents.errors import ConfigError


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"history": "maybe"}, "history 'maybe' is not one of stream, off"),
        (
            {"history": "off", "history_db": "postgresql://db/x"},
            "history_db is set but history is off",
        ),
    ],
)
def test_unusable_history_settings_fail_at_construction(
    kwargs: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        MessageQueue("amqp://guest:guest@localhost:5672/", namespace="ns", **kwargs)  # type: ignore[arg-type]


def test_history_db_without_the_postgres_extra_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"amqp-agents\[postgres\]"):
        MessageQueue(history_db="postgresql://db/x")
