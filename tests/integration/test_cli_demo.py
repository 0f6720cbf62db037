"""``amqp-agents demo``: the tutorial's scenario, canned or through an LLM (issue 12, item 13).

The LLM path runs against a small OpenAI-compatible HTTP server started here, with the
real ``openai`` client in the demo process, so the prompts the agents build and the way
they read the replies are both checked.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from amqp_agents.commands.messages import TIMELINE_HEADER

from .conftest import Run

TIMELINE = "read back from history):"


def timeline_rows(output: str) -> list[tuple[str, str, str]]:
    """(sender, recipient, type) of each timeline row, under the header."""
    lines = output.split(TIMELINE, 1)[1].strip().splitlines()
    assert lines[0] == TIMELINE_HEADER
    rows = []
    for line in lines[1:]:
        if not line.strip():
            break
        words = line.split()
        rows.append((words[1], words[3], words[4]))
    return rows


async def test_demo_runs_the_tutorial_scenario_with_canned_answers(run_cli: Run) -> None:
    status, output = await run_cli("demo")
    assert status == 0, output
    assert "Research: Research completed on: Research AI trends for 2024" in output
    assert "Article:  Article written based on: Research completed on:" in output
    assert "These answers are canned: no LLM is configured (OPENAI_API_KEY is unset)" in output
    for variable in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AMQP_AGENTS_MODEL"):
        assert variable in output.split("canned", 1)[1]
    # The writer streams its article in pieces, printed as they arrive.
    streamed = "Writer streams the article: Article written based on: Research completed on:"
    assert streamed in output
    assert output.index(streamed) < output.index("Article:  Article written")
    assert timeline_rows(output) == [
        ("coordinator", "researcher", "task"),
        ("researcher", "coordinator", "status"),
        ("researcher", "coordinator", "result"),
        ("coordinator", "writer", "task"),
        ("writer", "coordinator", "status"),  # "drafting"
        *[("writer", "coordinator", "status")] * 3,  # the article's three pieces
        ("writer", "coordinator", "result"),
    ]


class FakeOpenAI(ThreadingHTTPServer):
    """``POST /v1/chat/completions``: records each request, answers with a numbered reply."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CompletionHandler)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _CompletionHandler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(
                {"path": self.path, "auth": self.headers["Authorization"], **body}
            )
            n = len(self.server.requests)
        reply = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"model answer {n}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the recorded requests instead."""


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_demo_asks_the_configured_model(run_cli: Run, fake_openai: FakeOpenAI) -> None:
    status, output = await run_cli(
        "demo",
        env={
            "OPENAI_API_KEY": "sk-test-key",
            "OPENAI_BASE_URL": fake_openai.base_url,
            "AMQP_AGENTS_MODEL": "tiny-test-model",
        },
    )
    assert status == 0, output
    research, article = fake_openai.requests
    for request in (research, article):
        assert request["path"] == "/v1/chat/completions"
        assert request["auth"] == "Bearer sk-test-key"
        assert request["model"] == "tiny-test-model"
    research_prompt = research["messages"][0]["content"]
    assert "Research AI trends for 2024" in research_prompt
    article_prompt = article["messages"][0]["content"]
    assert "Write an article about AI trends" in article_prompt
    assert "research: model answer 1" in article_prompt, "the research is the context"
    assert "Research: model answer 1" in output
    assert "Article:  model answer 2" in output
    assert f"Answered by model 'tiny-test-model' at {fake_openai.base_url}" in output
    assert "canned" not in output
    # Between them, status reports: a model's answer streamed, "working" if it was slow.
    answers = [row[2] for row in timeline_rows(output) if row[2] != "status"]
    assert answers == ["task", "result", "task", "result"]
