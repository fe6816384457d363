"""RollingWindowTransform in a real agent loop: the OpenAI SDK over HTTP to a local server.

Each request sends ``window.apply(history)``; the history grows with the model's tool calls
(as the SDK returns them, dumped to dicts) and their results. Every body the server receives
must be exactly the windowed list, a valid conversation, within budget, with the system prompt,
the latest user message and the open tool exchange.
"""

from __future__ import annotations

import json
from typing import Any

from openai import OpenAI
from openai_server import Reply, ScriptedServer

from headroom.transforms import RollingWindowTransform, TokenCounter, count_messages_tokens
from headroom.transforms.conversation import parse_conversation

BUDGET = 600
ESTIMATE = TokenCounter.estimate()


def _tool_reply(turn: int, step: int) -> Reply:
    calls = [
        {
            "id": f"call_{turn}_{step}_{k}",
            "type": "function",
            "function": {"name": "search", "arguments": json.dumps({"q": f"topic {turn} {k}"})},
        }
        for k in range(2)
    ]
    return Reply(content=None, tool_calls=calls)


def test_agent_loop_over_http_sends_valid_windows_within_budget() -> None:
    window = RollingWindowTransform(max_tokens=BUDGET, keep_last_turns=0, token_counter=ESTIMATE)
    history: list[dict[str, Any]] = [{"role": "system", "content": "You are a research agent."}]
    sent: list[list[dict[str, Any]]] = []
    with ScriptedServer() as server:
        client = OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)

        def ask() -> Any:
            windowed = window.apply(history)
            sent.append(windowed)
            return client.chat.completions.create(model="test-model", messages=windowed)

        for turn in range(4):
            history.append({"role": "user", "content": f"Question {turn}: " + "details " * 30})
            for step in range(3):
                server.push(_tool_reply(turn, step))
                message = ask().choices[0].message
                history.append(message.model_dump(exclude_none=True))
                for call in message.tool_calls or []:
                    history.append(
                        {"role": "tool", "tool_call_id": call.id, "content": "result " * 40}
                    )
            server.push("Here is what I found. " * 5)
            history.append({"role": "assistant", "content": ask().choices[0].message.content})
        bodies = [body["messages"] for body in server.chat_requests()]

    assert len(bodies) == len(sent) == 16
    assert count_messages_tokens(history, ESTIMATE) > 3 * BUDGET  # the window had work to do
    for body, windowed in zip(bodies, sent, strict=True):
        assert body == windowed  # the SDK sent exactly the windowed list
        parse_conversation(body)
        assert count_messages_tokens(body, ESTIMATE) <= BUDGET
        assert body[0] == history[0]
        non_system = [m for m in body if m["role"] != "system"]
        assert non_system[0]["role"] == "user"
    # each request carried the newest user message and, mid-loop, the open tool exchange whole
    for body in bodies:
        users = [m for m in body if m["role"] == "user"]
        assert users and users[-1]["content"].startswith("Question")
        if body[-1]["role"] == "tool":
            calls = next(m for m in reversed(body) if m["role"] == "assistant")["tool_calls"]
            answered = {m["tool_call_id"] for m in body if m["role"] == "tool"}
            assert {c["id"] for c in calls} <= answered
    assert [m["content"][:10] for m in bodies[-1] if m["role"] == "user"][-1] == "Question 3"
