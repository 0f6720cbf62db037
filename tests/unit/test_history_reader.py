"""Where a client's history settings send its queries, checked before any connection."""

from __future__ import annotations

import pytest

from amqp_agents import MessageQueue
from amqp_agents.config_schema import AgentsConfig
from amqp_agents.errors import ConfigError
from amqp_agents.history_reader import require_postgres
from amqp_agents.runner import prepare


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


def test_history_db_without_the_postgres_extra_fails_run_at_once_and_queries_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    MessageQueue(history_db="postgresql://db/x")  # a client that only sends needs none
    config = AgentsConfig.model_validate(
        {
            "history": {"db": "postgresql://db/x"},
            "agents": [{"id": "a", "class": "amqp_agents:MessagePassingAgent"}],
        }
    )
    with pytest.raises(ConfigError, match=r"history.db needs .*amqp-agents\[postgres\]"):
        prepare(config)
    with pytest.raises(ConfigError, match=r"history_db needs .*amqp-agents\[postgres\]"):
        require_postgres("history_db")
