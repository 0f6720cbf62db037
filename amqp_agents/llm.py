"""An LLM for the task handler: the OpenAI-compatible call behind ``_process_task``.

The library does not depend on any LLM package. An agent given ``llm_client`` (any
object with an async ``chat.completions.create(model=..., messages=...)``, such as
``openai.AsyncOpenAI``) completes tasks with :func:`complete_task`; the demo gets its
client from :func:`client_from_env`.
"""

from __future__ import annotations

import os
from typing import Any


def task_prompt(task: str, context: dict[str, Any]) -> str:
    """The prompt for a task: its description, then its context one ``key: value`` a line."""
    context_str = "\n".join(f"{k}: {v}" for k, v in context.items()) or "None"
    return f"Complete this task:\n{task}\n\nContext:\n{context_str}"


async def complete_task(client: Any, model: str, task: str, context: dict[str, Any]) -> Any:
    """Ask ``client`` (OpenAI-compatible, duck-typed) to complete ``task``; its answer's text."""
    response = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": task_prompt(task, context)}]
    )
    return response.choices[0].message.content


def client_from_env() -> Any:
    """An OpenAI-compatible async client if ``OPENAI_API_KEY`` is set and the ``openai``
    package is installed (``OPENAI_BASE_URL`` picks another endpoint), else None."""
    if not os.environ.get("OPENAI_API_KEY"):
        return None
    try:
        from openai import AsyncOpenAI
    except ImportError:
        return None
    return AsyncOpenAI()
