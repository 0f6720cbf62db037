"""The test suite on a machine without a local broker: it asks Docker for a RabbitMQ
container (testcontainers), and says exactly what is missing when that fails.

There is no Docker engine here, so the path is tested up to the Docker call: the
container's module imports under ``filterwarnings = error`` and ``start()`` is called.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT_CONFTEST = str(Path(__file__).parents[1] / "conftest.py")


def root_conftest(config: pytest.Config) -> Any:
    """tests/conftest.py as pytest loaded it.

    Asked of pytest's plugin manager, not ``sys.modules``: the conftest files of folders
    without ``__init__.py`` (tests/, tests/reliability/) are all imported as ``conftest``,
    so in a whole-suite run the later one replaces the root's entry in ``sys.modules``.
    """
    found = [
        plugin
        for plugin in config.pluginmanager.get_plugins()
        if getattr(plugin, "__file__", None) == ROOT_CONFTEST
    ]
    assert found and isinstance(found[0], ModuleType)
    return found[0]


def test_testcontainers_rabbitmq_imports_with_warnings_as_errors(
    pytestconfig: pytest.Config,
) -> None:
    container_class = root_conftest(pytestconfig).rabbitmq_container_class()

    assert container_class.__name__ == "RabbitMqContainer"


def test_without_a_local_broker_the_suite_starts_a_container(
    monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config
) -> None:
    conftest = root_conftest(pytestconfig)
    asked: list[str] = []

    def ask_docker(self: Any, image: str, **kwargs: Any) -> None:
        asked.append(image)  # the container's constructor is the first call to Docker
        raise RuntimeError("no Docker engine here")

    monkeypatch.delenv("AMQP_URL", raising=False)
    monkeypatch.setattr(conftest, "_port_open", lambda host, port: False)
    monkeypatch.setattr(conftest.rabbitmq_container_class(), "__init__", ask_docker)

    with pytest.raises(pytest.fail.Exception) as failed:
        next(conftest.find_rabbitmq())

    assert asked == ["rabbitmq:3.13-management"]
    assert "testcontainers could not start one" in str(failed.value)
    assert "no Docker engine here" in str(failed.value)
    assert "docker compose up -d rabbitmq" in str(failed.value)
