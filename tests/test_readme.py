"""Every Python code block of the README runs, against the tests' local OpenAI-compatible server.

The blocks run in order in one scratch directory (they share ``memory.db`` as a reader's
session would), with OPENAI_BASE_URL and OPENAI_API_KEY pointing the real openai SDK at the
scripted server, which answers every call with a short answer and a memory block that keeps
what the user said.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from openai_server import Reply, ScriptedServer

from headroom.memory.protocol.block import MEMORY_INSTRUCTION
from headroom.memory.protocol.budget import chat_prompt_tokens
from headroom.transforms import default_counter

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def test_readme_has_python_blocks() -> None:
    assert len(_blocks()) >= 4


def test_readme_python_blocks_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with ScriptedServer() as server:

        def respond(body: dict[str, Any]) -> Reply:
            said = _last_user_text(body)[:200]
            block = {"add": [{"text": f"User said: {said}", "category": "fact"}]} if said else {}
            return Reply(f"Noted.\n\n<memory>{json.dumps(block)}</memory>")

        server.responder = respond
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.chdir(tmp_path)
        for number, code in enumerate(_blocks(), 1):
            namespace: dict[str, Any] = {"__name__": f"readme_block_{number}"}
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)
            client = namespace.get("client")
            if client is not None and hasattr(client, "flush"):
                client.flush()
        assert server.chat_requests(), "the README's examples never reached the server"
        # The rolling-window section's budgeted call: what was sent fits its 4,000 tokens.
        budgeted = [
            b["messages"] for b in server.chat_requests() if _last_user_text(b) == "And now?"
        ]
        assert len(budgeted) == 1
        assert chat_prompt_tokens(budgeted[0], default_counter()) <= 4000
        assert {"role": "system", "content": MEMORY_INSTRUCTION} in budgeted[0]
    printed = capsys.readouterr().out
    # The quickstart's search finds what its first call extracted; no block text is printed.
    assert "User said: I'm a Python developer at a fintech startup" in printed
    assert "<memory>" not in printed
    assert "['User is a senior engineer', 'User is a staff engineer']" in printed
