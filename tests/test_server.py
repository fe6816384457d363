"""The memory server (``headroom-memory serve``) with real clients over real HTTP.

The server runs on uvicorn on a free port of 127.0.0.1 (a thread, or the real command in a
subprocess), in front of the scripted upstream of tests/openai_server.py. Clients: the openai
Python SDK, ``curl``, a Node.js script using plain ``fetch``, and httpx2 for the REST API.
The embedder is the deterministic HashEmbedder with the relevance floor off (every memory of
the user is injected, up to top_k), except in the command's test, which uses the real MiniLM.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai_server import Reply, memory_reply
from server_helpers import RETRY_AFTER, Served, Upstream, free_port, serve, sse_events, sse_text
from store_helpers import HashEmbedder

from headroom.memory import MemoryStore
from headroom.memory.cli.scripted_llm import memory_notes
from headroom.memory.client.background import EXTRACTION_PROMPT, close_all
from headroom.memory.protocol.budget import chat_prompt_tokens
from headroom.memory.protocol.pipeline import INSTRUCTION_MESSAGE
from headroom.memory.server import ServerConfig
from headroom.transforms.tokens import resolve_counter

EMBEDDER = HashEmbedder(dim=32)
KEY = "server-secret"
SERVE = (sys.executable, "-m", "headroom.memory.cli", "serve")
USER_KEYS = {"key-of-carol": "carol", "key-of-dave": "dave"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def served(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    config = ServerConfig(
        upstream=upstream.base_url,
        db=str(tmp_path_factory.mktemp("server") / "memory.db"),
        wrap_options={"embedder": EMBEDDER, "min_score": -1.0},
    )
    with serve(config) as running:
        yield running
    close_all()


@pytest.fixture
def up(upstream: Upstream, served: Served) -> Upstream:
    upstream.reset()
    return upstream


def sdk(served: Served, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.base_url, api_key="sk-caller", max_retries=0, **options)


def rest(served: Served, method: str, path: str, **kwargs: Any) -> httpx2.Response:
    return httpx2.request(method, served.root + path, timeout=30, **kwargs)


def memories(served: Served, user: str) -> list[str]:
    response = rest(served, "GET", "/v1/memory/memories", params={"user": user})
    assert response.status_code == 200, response.text
    return [m["text"] for m in response.json()["memories"]]


def injected(body: dict[str, Any]) -> list[str]:
    return [note["text"] for note in memory_notes(body["messages"])]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "30", *args], capture_output=True, text=True, check=True
    )


def user_message(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- the openai Python SDK --------------------------------------------------------------------


def test_sdk_chat_injects_extracts_and_forwards_authorization(served: Served, up: Upstream) -> None:
    client = sdk(served)
    up.push(memory_reply("Noted, teal it is.", "User's favourite colour is teal"))
    first = client.chat.completions.create(
        model="m", messages=user_message("My favourite colour is teal."), user="alice"
    )
    assert first.choices[0].message.content == "Noted, teal it is."
    assert first.usage is not None and first.usage.total_tokens == 18
    assert memories(served, "alice") == ["User's favourite colour is teal"]
    up.push("Teal.")
    client.chat.completions.create(
        model="m", messages=user_message("What colour do I like?"), user="alice"
    )
    body = up.chat_requests()[-1]
    assert injected(body) == ["User's favourite colour is teal"]
    assert body["user"] == "alice" and body["messages"][-1]["content"] == "What colour do I like?"
    headers = up.headers_of("/chat/completions")[-1]
    assert headers["authorization"] == "Bearer sk-caller"


def test_sdk_stream_hides_the_block_and_stores_it(served: Served, up: Upstream) -> None:
    client = sdk(served)
    up.push(memory_reply("Porto is lovely in spring.", "User lives in Porto"))
    stream = client.chat.completions.create(
        model="m",
        messages=user_message("I live in Porto."),
        safety_identifier="erin-hash",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Porto is lovely in spring."
    assert chunks[-1].usage is not None and not chunks[-1].choices  # the usage chunk came through
    assert memories(served, "erin-hash") == ["User lives in Porto"]


def test_sdk_passthrough_models_embeddings_and_no_user(served: Served, up: Upstream) -> None:
    client = sdk(served)
    assert [m.id for m in client.models.list()] == ["scripted-model"]
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 1536
    up.push(memory_reply("Plain.", "Should never be stored"))
    answer = client.chat.completions.create(model="m", messages=user_message("hello"))
    # no end user: the request and the answer pass untouched (the block is the upstream's)
    assert answer.choices[0].message.content.startswith("Plain.<memory>")
    assert up.chat_requests()[-1] == {"model": "m", "messages": user_message("hello")}


def test_sdk_upstream_errors_reach_the_client_unchanged(served: Served, up: Upstream) -> None:
    client = sdk(served)
    up.push(Reply(status=429, error_message="slow down"))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=user_message("hi"), user="alice")
    assert caught.value.body == {"message": "slow down", "type": "server_error"}
    assert caught.value.response.headers["retry-after"] == RETRY_AFTER
    up.push(Reply(status=429, error_message="slow down, streamer"))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="m", messages=user_message("hi"), user="alice", stream=True
        )
    assert caught.value.response.headers["retry-after"] == RETRY_AFTER
    up.push(Reply(status=400, error_message="bad model"))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=user_message("hi"), user="alice")
    # an error event in the middle of a stream is re-emitted; the SDK raises on it
    up.push(Reply("abcdefghijklmnopqrstuvwxyz", stream_error_after=2))
    with pytest.raises(openai.APIError, match="scripted error"):
        list(
            client.chat.completions.create(
                model="m", messages=user_message("hi"), user="alice", stream=True
            )
        )


def test_sdk_responses_api_injects_extracts_and_streams(served: Served, up: Upstream) -> None:
    client = sdk(served)
    up.push(memory_reply("Welcome, Nia.", "User's name is Nia"))
    first = client.responses.create(model="m", input="I'm Nia.", user="nia")
    assert first.output_text == "Welcome, Nia."
    assert memories(served, "nia") == ["User's name is Nia"]
    up.push(memory_reply("Hi again, Nia.", "User likes jazz"))
    stream = client.responses.create(
        model="m", input=[{"role": "user", "content": "I like jazz"}], user="nia", stream=True
    )
    events = list(stream)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hi again, Nia."
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Hi again, Nia."
    body = up.responses_requests()[-1]
    notes = [i for i in body["input"] if i.get("role") == "system"]
    assert len(notes) == 1 and "User's name is Nia" in notes[0]["content"]
    assert sorted(memories(served, "nia")) == ["User likes jazz", "User's name is Nia"]
    # raw: event/data pairs as the upstream sent them, no [DONE], no block
    up.push(memory_reply("Sure.", "User plays piano"))
    payload = {"model": "m", "input": "I play piano", "user": "nia", "stream": True}
    out = curl(
        "-N",
        served.base_url + "/responses",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps(payload),
    ).stdout
    assert out.startswith("event: response.created\ndata: {")
    assert "<memory" not in out and "[DONE]" not in out
    types = re.findall(r"(?m)^event: (\S+)$", out)
    datas = [json.loads(d)["type"] for d in sse_events(out)]
    assert types == datas and types[-1] == "response.completed"


def test_a_client_leaving_mid_stream_closes_the_upstream_and_stores_nothing(
    served: Served, up: Upstream
) -> None:
    up.stream_delay = 0.05
    up.push(memory_reply("A long answer that the client will not wait for.", "Never stored"))
    body = {"model": "m", "messages": user_message("tell me"), "user": "pia", "stream": True}
    with httpx2.stream("POST", served.base_url + "/chat/completions", json=body) as response:
        first = next(response.iter_lines())
    assert first.startswith("data: ")
    deadline = time.monotonic() + 10
    while up.broken_streams == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert up.broken_streams == 1  # the server closed its upstream stream
    up.stream_delay = 0.0
    up.push("Still serving.")
    answer = sdk(served).chat.completions.create(model="m", messages=user_message("hi"), user="pia")
    assert answer.choices[0].message.content == "Still serving."
    assert memories(served, "pia") == []


def test_isolation_between_users(served: Served, up: Upstream) -> None:
    client = sdk(served)
    up.push(memory_reply("ok", "Frank's secret is 4417"))
    client.chat.completions.create(model="m", messages=user_message("remember"), user="frank")
    up.push(memory_reply("ok", "Grace likes tea"))
    client.chat.completions.create(
        model="m", messages=user_message("remember"), extra_headers={"X-Headroom-User": "grace"}
    )
    up.push("ok")
    client.chat.completions.create(model="m", messages=user_message("secret?"), user="grace")
    assert injected(up.chat_requests()[-1]) == ["Grace likes tea"]
    assert memories(served, "frank") == ["Frank's secret is 4417"]
    # the user field wins over the header, safety_identifier over the header too
    up.push("ok")
    client.chat.completions.create(
        model="m",
        messages=user_message("secret?"),
        user="frank",
        extra_headers={"X-Headroom-User": "grace"},
    )
    assert injected(up.chat_requests()[-1]) == ["Frank's secret is 4417"]
    assert "x-headroom-user" not in up.headers_of("/chat/completions")[-1]


def test_the_memory_field_selects_the_mode_per_call(served: Served, up: Upstream) -> None:
    client = sdk(served)
    up.push(memory_reply("Off.", "Not stored"))
    off = client.chat.completions.create(
        model="m", messages=user_message("hi"), user="quinn", extra_body={"memory": "off"}
    )
    assert off.choices[0].message.content.startswith("Off.<memory>")  # untouched
    assert up.chat_requests()[-1] == {"model": "m", "messages": user_message("hi"), "user": "quinn"}
    up.push(memory_reply("Read.", "Not stored either"))
    read = client.chat.completions.create(
        model="m", messages=user_message("hi"), user="quinn", extra_body={"memory": "read"}
    )
    assert read.choices[0].message.content == "Read."  # a block is still hidden
    assert memories(served, "quinn") == []


def test_bad_memory_mode_and_bad_user_are_400_json(served: Served, up: Upstream) -> None:
    response = rest(
        served,
        "POST",
        "/v1/chat/completions",
        json={"model": "m", "messages": user_message("hi"), "user": "alice", "memory": "sideways"},
    )
    assert response.status_code == 400
    assert "memory" in response.json()["error"]["message"]
    response = rest(
        served,
        "POST",
        "/v1/chat/completions",
        json={"model": "m", "messages": user_message("hi"), "user": "x" * 300},
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "InvalidUserIdError"
    assert up.chat_requests() == []


# --- curl and Node ------------------------------------------------------------------------------


def test_curl(served: Served, up: Upstream) -> None:
    url = served.base_url + "/chat/completions"
    up.push(memory_reply("Hi Hana.", "User's name is Hana"))
    body = {"model": "m", "messages": user_message("I'm Hana"), "user": "hana"}
    out = curl(url, "-H", "Content-Type: application/json", "-d", json.dumps(body))
    assert json.loads(out.stdout)["choices"][0]["message"]["content"] == "Hi Hana."
    up.push(memory_reply("Hello again, Hana!", "User works at a bakery", chunks=None))
    stream_body = {**body, "messages": user_message("I work at a bakery"), "stream": True}
    out = curl("-N", url, "-H", "Content-Type: application/json", "-d", json.dumps(stream_body))
    events = sse_events(out.stdout)
    assert events[-1] == "[DONE]" and "<memory" not in out.stdout
    assert sse_text(out.stdout) == "Hello again, Hana!"
    assert injected(up.chat_requests()[-1]) == ["User's name is Hana"]
    assert memories(served, "hana") == ["User's name is Hana", "User works at a bakery"]
    models = curl(served.base_url + "/models", "-H", "Authorization: Bearer sk-curl")
    assert json.loads(models.stdout)["data"][0]["id"] == "scripted-model"
    assert up.headers_of("/models")[-1]["authorization"] == "Bearer sk-curl"
    up.push(Reply(status=429, error_message="too many"))
    limited = curl("-i", url, "-H", "Content-Type: application/json", "-d", json.dumps(body))
    head, _, payload = limited.stdout.partition("\n\n")  # text mode: CRLF read as LF
    assert head.startswith("HTTP/1.1 429")
    assert re.search(rf"(?im)^retry-after: {RETRY_AFTER}$", head)
    assert json.loads(payload)["error"]["message"] == "too many"


NODE_SCRIPT = r"""
const base = process.argv[2];
const headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-node"};
async function chat(body) {
  const r = await fetch(base + "/chat/completions",
                        {method: "POST", headers, body: JSON.stringify(body)});
  return [r.status, r.headers.get("retry-after"), await r.text()];
}
const out = {};
const msgs = (t) => [{role: "user", content: t}];
out.first = await chat({model: "m", messages: msgs("I play the cello"), user: "ivan"});
const r = await fetch(base + "/chat/completions", {method: "POST", headers,
  body: JSON.stringify({model: "m", messages: msgs("What do I play?"), user: "ivan",
                        stream: true})});
const reader = r.body.getReader();
const decoder = new TextDecoder();
let raw = "", reads = 0;
for (;;) {
  const {done, value} = await reader.read();
  if (done) break;
  reads++;
  raw += decoder.decode(value);
}
out.stream = [r.status, r.headers.get("content-type"), raw, reads];
const m = await fetch(base + "/models", {headers});
out.models = [m.status, await m.json()];
out.limited = await chat({model: "m", messages: msgs("again"), user: "ivan"});
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_fetch(served: Served, up: Upstream, tmp_path: Path) -> None:
    script = tmp_path / "client.mjs"
    script.write_text(NODE_SCRIPT)
    up.push(
        memory_reply("Lovely.", "User plays the cello"),
        memory_reply("The cello, you said.", "User practises daily"),
        Reply(status=429, error_message="slow"),
    )
    done = subprocess.run(
        ["node", str(script), served.base_url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    status, _, text = out["first"]
    assert status == 200 and json.loads(text)["choices"][0]["message"]["content"] == "Lovely."
    status, content_type, raw, _ = out["stream"]
    assert status == 200 and content_type.startswith("text/event-stream")
    assert sse_events(raw)[-1] == "[DONE]" and "<memory" not in raw and "practises" not in raw
    assert sse_text(raw) == "The cello, you said."
    assert injected(up.chat_requests()[1]) == ["User plays the cello"]
    assert out["models"] == [
        200,
        {"object": "list", "data": [{"id": "scripted-model", "object": "model"}]},
    ]
    status, retry_after, text = out["limited"]
    assert status == 429 and retry_after == RETRY_AFTER
    assert json.loads(text) == {"error": {"message": "slow", "type": "server_error"}}
    assert memories(served, "ivan") == ["User plays the cello", "User practises daily"]
    assert up.headers_of("/chat/completions")[0]["authorization"] == "Bearer sk-node"


README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## From any language") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.M | re.S)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_readme_curl_and_node_examples_run(served: Served, up: Upstream, tmp_path: Path) -> None:
    curl_block = next(b for b in _readme_blocks("sh") if b.startswith("curl"))
    node_block = _readme_blocks("js")[0]
    env = {**os.environ, "OPENAI_API_KEY": "sk-readme"}
    up.push(memory_reply("Welcome to Porto!", "User lives in Porto"))
    script = curl_block.replace("http://127.0.0.1:8787", served.root)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["choices"][0]["message"]["content"] == "Welcome to Porto!"
    up.push(memory_reply("In Porto.", "User asked where they live"))
    node = tmp_path / "readme.mjs"
    node.write_text(node_block.replace("http://127.0.0.1:8787", served.root))
    done = subprocess.run(["node", str(node)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sse_text(done.stdout) == "In Porto." and sse_events(done.stdout)[-1] == "[DONE]"
    assert "<memory" not in done.stdout
    assert "User lives in Porto" in injected(up.chat_requests()[-1])  # alice's, from curl
    assert {h["authorization"] for h in up.headers_of("/chat/completions")} == {"Bearer sk-readme"}


# --- the REST API -------------------------------------------------------------------------------


def test_rest_every_route(served: Served, up: Upstream) -> None:
    user = {"X-Headroom-User": "jo"}
    added = rest(
        served,
        "POST",
        "/v1/memory/memories",
        headers=user,
        json={"text": "Jo deploys with Terraform", "metadata": {"project": "apollo"}},
    )
    assert added.status_code == 201, added.text
    memory = added.json()
    assert memory["category"] == "fact" and memory["metadata"] == {"project": "apollo"}
    other = rest(
        served,
        "POST",
        "/v1/memory/memories",
        json={"text": "Jo prefers vim", "category": "preference", "user": "jo"},
    ).json()
    item = f"/v1/memory/memories/{memory['id']}"
    assert rest(served, "GET", item, headers=user).json()["text"] == "Jo deploys with Terraform"
    found = rest(
        served, "POST", "/v1/memory/search", headers=user, json={"query": "terraform", "top_k": 1}
    ).json()["results"]
    assert len(found) == 1 and isinstance(found[0]["score"], float)
    filtered = rest(
        served,
        "GET",
        "/v1/memory/memories",
        params={"user": "jo", "metadata": json.dumps({"project": "apollo"})},
    ).json()["memories"]
    assert [m["id"] for m in filtered] == [memory["id"]]
    updated = rest(served, "PATCH", item, headers=user, json={"text": "Jo deploys with Pulumi"})
    assert updated.status_code == 200 and updated.json()["text"] == "Jo deploys with Pulumi"
    versions = rest(served, "GET", item + "/history", headers=user).json()["versions"]
    assert [v["text"] for v in versions] == ["Jo deploys with Terraform", "Jo deploys with Pulumi"]
    stats = rest(served, "GET", "/v1/memory/stats", headers=user).json()
    assert stats["total_chunks"] == 2
    export = rest(served, "GET", "/v1/memory/export", headers=user)
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert {line["id"] for line in lines if "id" in line} >= {memory["id"], other["id"]}
    assert rest(served, "DELETE", item, headers=user).json() == {"deleted": memory["id"]}
    assert rest(served, "GET", item, headers=user).status_code == 404
    assert rest(served, "POST", "/v1/memory/forget", headers=user, json={}).json() == {
        "forgotten": 1
    }
    assert memories(served, "jo") == []
    # another user never sees jo's memories, even by id
    again = rest(served, "POST", "/v1/memory/memories", headers=user, json={"text": "x"}).json()
    stranger = {"X-Headroom-User": "kim"}
    assert (
        rest(served, "GET", f"/v1/memory/memories/{again['id']}", headers=stranger).status_code
        == 404
    )
    doc = rest(served, "GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v1/memory/search" in doc["paths"]
    routes = {
        (path.replace("{memory_id}", "x"), method.upper())
        for path, item in doc["paths"].items()
        for method in item
    }
    served_routes = {
        (route.path.replace("{memory_id}", "x"), method)
        for route in served.app.routes
        if route.path.startswith("/v1/") and "{path" not in route.path
        for method in route.methods - {"HEAD"}
    }
    assert routes == served_routes  # the document lists every route the server has


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "needle"),
    [
        ("POST", "/v1/memory/search", {"content": b"{not json"}, 400, "not valid JSON"),
        ("POST", "/v1/memory/search", {"json": {"top_k": 3}}, 400, "query"),
        ("POST", "/v1/memory/search", {"json": {"query": "x", "top_k": "many"}}, 400, "top_k"),
        ("POST", "/v1/memory/search", {"json": {"query": "x", "bogus": 1}}, 400, "bogus"),
        ("POST", "/v1/memory/memories", {"json": {"text": ""}}, 400, "text"),
        (
            "POST",
            "/v1/memory/memories",
            {"json": {"text": "a", "category": "mood"}},
            400,
            "categor",
        ),
        ("POST", "/v1/memory/memories", {"json": {"text": "a", "metadata": [1]}}, 400, "metadata"),
        (
            "POST",
            "/v1/memory/memories",
            {"json": {"text": "a", "created_at": "soon"}},
            400,
            "created_at",
        ),
        ("POST", "/v1/memory/memories", {"json": {"text": "a", "dedup": "yes"}}, 400, "dedup"),
        ("GET", "/v1/memory/memories", {"params": {"since": "yesterday"}}, 400, "since"),
        ("GET", "/v1/memory/memories/nope", {}, 404, "nope"),
        ("PATCH", "/v1/memory/memories/nope", {"json": {"text": "b"}}, 404, "nope"),
        ("DELETE", "/v1/memory/memories/nope", {}, 404, "nope"),
        ("GET", "/v1/memory/memories/nope/history", {}, 404, "nope"),
        ("POST", "/v1/memory/forget", {"json": {"ids": "all"}}, 400, "ids"),
        (
            "GET",
            "/v1/memory/export",
            {"params": {"include_vectors": "maybe"}},
            400,
            "include_vectors",
        ),
    ],
)
def test_rest_bad_input_is_a_json_4xx(
    served: Served, method: str, path: str, kwargs: dict[str, Any], status: int, needle: str
) -> None:
    headers = {"X-Headroom-User": "lee", "Content-Type": "application/json"}
    response = rest(served, method, path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]


def test_rest_add_keeps_copies_by_default_and_dedups_on_request(served: Served) -> None:
    user = {"X-Headroom-User": "dee"}
    path = "/v1/memory/memories"
    copies = [rest(served, "POST", path, headers=user, json={"text": "Dee rows"}) for _ in "ab"]
    assert [r.status_code for r in copies] == [201, 201]
    assert copies[0].json()["id"] != copies[1].json()["id"]
    first = rest(served, "POST", path, headers=user, json={"text": "Dee sails", "dedup": True})
    again = rest(served, "POST", path, headers=user, json={"text": "Dee sails", "dedup": True})
    assert again.status_code == 201 and again.json() == first.json()  # the stored memory
    assert sorted(memories(served, "dee")) == ["Dee rows", "Dee rows", "Dee sails"]


def test_rest_without_a_user_is_400(served: Served) -> None:
    response = rest(served, "GET", "/v1/memory/memories")
    assert response.status_code == 400 and "no user" in response.json()["error"]["message"]


def test_browsers_cannot_reach_the_server(served: Served, up: Upstream) -> None:
    # A web page the operator visits sends simple cross-site POSTs (text/plain, an Origin of
    # its own) without asking first, and a DNS-rebinding page names its own host: neither may
    # add, read or forget memories.
    rest(served, "POST", "/v1/memory/memories", json={"user": "amy", "text": "User likes tea"})
    page = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    body = json.dumps({"user": "amy"})
    for method, path in (("POST", "/v1/memory/forget"), ("POST", "/v1/chat/completions")):
        response = rest(served, method, path, headers=page, content=body)
        assert response.status_code == 403 and response.json()["error"]["code"] == "bad_origin"
    rebinding = {"Host": "evil.example:8787"}
    response = rest(served, "GET", "/v1/memory/export", params={"user": "amy"}, headers=rebinding)
    assert response.status_code == 421, response.text
    response = rest(served, "POST", "/v1/memory/forget", content=body,
                    headers={"Content-Type": "text/plain"})  # fmt: skip
    assert response.status_code == 415, response.text
    assert memories(served, "amy") == ["User likes tea"]
    local = {"Origin": "http://localhost:3000"}  # a page of the operator's own, on loopback
    assert (
        rest(
            served, "GET", "/v1/memory/memories", params={"user": "amy"}, headers=local
        ).status_code
        == 200
    )
    assert rest(served, "GET", "/v1/models/../../admin").status_code in (400, 404)
    response = rest(served, "GET", "/v1/models/%2e%2e/admin")
    assert response.status_code == 400 and up.requests == []


# --- keys, failures, the upstream unreachable ----------------------------------------------------


def test_server_key_and_user_keys(upstream: Upstream, tmp_path: Path) -> None:
    upstream.reset()
    config = ServerConfig(
        upstream=upstream.base_url,
        db=str(tmp_path / "memory.db"),
        api_key=KEY,
        user_keys=USER_KEYS,
        wrap_options={"embedder": EMBEDDER, "min_score": -1.0},
    )
    with serve(config) as running:
        body = {"model": "m", "messages": user_message("hi"), "user": "carol"}
        url = "/v1/chat/completions"
        assert rest(running, "POST", url, json=body).status_code == 401
        assert (
            rest(running, "GET", "/v1/models", headers={"X-Headroom-Key": "x"}).status_code == 401
        )
        upstream.push(memory_reply("ok", "Carol's note"))
        ok = rest(running, "POST", url, json=body, headers={"X-Headroom-Key": "key-of-carol"})
        assert ok.status_code == 200
        # dave's key cannot name carol; with no user field it acts for dave
        spoof = rest(running, "POST", url, json=body, headers={"X-Headroom-Key": "key-of-dave"})
        assert spoof.status_code == 403 and "another user" in spoof.json()["error"]["message"]
        upstream.push("ok")
        plain = {"model": "m", "messages": user_message("hi")}
        rest(running, "POST", url, json=plain, headers={"X-Headroom-Key": "key-of-dave"})
        assert injected(upstream.chat_requests()[-1]) == []
        listed = rest(
            running, "GET", "/v1/memory/memories", headers={"X-Headroom-Key": "key-of-carol"}
        )
        assert [m["text"] for m in listed.json()["memories"]] == ["Carol's note"]
        # the server key may name any user; the key header never reaches the upstream
        upstream.push("ok")
        rest(running, "POST", url, json=body, headers={"X-Headroom-Key": KEY})
        assert injected(upstream.chat_requests()[-1]) == ["Carol's note"]
        assert all("x-headroom-key" not in h for _, h in upstream.headers)
        assert rest(running, "GET", "/openapi.json").status_code == 200
    close_all()


class _BrokenEmbedder(HashEmbedder):
    def embed(self, texts: Any) -> Any:
        raise RuntimeError("embedder down")


def test_a_memory_failure_never_fails_the_call(upstream: Upstream, tmp_path: Path) -> None:
    upstream.reset()
    config = ServerConfig(
        upstream=upstream.base_url,
        db=str(tmp_path / "memory.db"),
        wrap_options={"embedder": _BrokenEmbedder(dim=32, model_id="test/broken")},
    )
    with serve(config) as running:
        client = sdk(running)
        upstream.push(memory_reply("Still answered.", "lost"))
        answer = client.chat.completions.create(model="m", messages=user_message("hi"), user="u")
        assert answer.choices[0].message.content == "Still answered."
        upstream.push(memory_reply("Streamed anyway.", "lost"))
        stream = client.chat.completions.create(
            model="m", messages=user_message("hi"), user="u", stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "Streamed anyway."
    close_all()


def test_unreachable_upstream_is_502_json(tmp_path: Path) -> None:
    config = ServerConfig(
        upstream=f"http://127.0.0.1:{free_port()}/v1",
        db=str(tmp_path / "memory.db"),
        wrap_options={"embedder": EMBEDDER},
    )
    with serve(config) as running:
        body = {"model": "m", "messages": user_message("hi"), "user": "u"}
        response = rest(running, "POST", "/v1/chat/completions", json=body)
        assert response.status_code == 502 and "upstream" in response.json()["error"]["message"]
        assert rest(running, "GET", "/v1/models").status_code == 502
    close_all()


def test_background_mode_extracts_with_the_callers_key(upstream: Upstream, tmp_path: Path) -> None:
    upstream.reset()

    def respond(body: dict[str, Any]) -> Reply:
        if body["messages"][0].get("content") == EXTRACTION_PROMPT:
            said = body["messages"][-1]["content"]
            return memory_reply("", f"Extracted from: {said[:40]}")
        return Reply("Answer as the model gave it.")

    upstream.responder = respond
    config = ServerConfig(
        upstream=upstream.base_url,
        db=str(tmp_path / "memory.db"),
        mode="background",
        wrap_options={"embedder": EMBEDDER, "min_score": -1.0},
    )
    with serve(config) as running:
        client = sdk(running)
        answer = client.chat.completions.create(
            model="m", messages=user_message("I keep bees"), user="olga"
        )
        assert answer.choices[0].message.content == "Answer as the model gave it."
        deadline = time.monotonic() + 20
        while not memories(running, "olga") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert memories(running, "olga")[0].startswith("Extracted from: ")
        # the extraction call went upstream with the caller's Authorization
        assert [h["authorization"] for h in upstream.headers_of("/chat/completions")] == [
            "Bearer sk-caller",
            "Bearer sk-caller",
        ]
    close_all()


# --- load -----------------------------------------------------------------------------------------


def test_load_50_concurrent_streams_for_10_users(served: Served, up: Upstream) -> None:
    users = [f"load-user-{i}" for i in range(10)]
    rounds = 5

    def respond(body: dict[str, Any]) -> Reply:
        text = body["messages"][-1]["content"]
        return memory_reply(f"Answer to {text}.", f"Fact: {text}", chunks=None)

    up.responder = respond
    client = sdk(served, timeout=60)

    def one(job: tuple[str, int]) -> str:
        user, i = job
        stream = client.chat.completions.create(
            model="m", messages=user_message(f"{user} item {i}"), user=user, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    jobs = [(user, i) for i in range(rounds) for user in users]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(one, jobs))
    assert time.monotonic() - started < 30
    assert answers == [f"Answer to {user} item {i}." for user, i in jobs]
    for user in users:
        assert sorted(memories(served, user)) == sorted(
            f"Fact: {user} item {i}" for i in range(rounds)
        )
    for body in up.chat_requests():
        owner = body["user"]
        for text in injected(body):
            assert text.startswith(f"Fact: {owner} item "), (owner, text)


# --- the command ----------------------------------------------------------------------------------


def test_serve_command_end_to_end_with_minilm(upstream: Upstream, tmp_path: Path) -> None:
    upstream.reset()
    db = tmp_path / "memory.db"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "HEADROOM_SERVER_KEY"}
    proc = subprocess.Popen(
        [*SERVE, "--upstream", upstream.base_url, "--port", str(port), "--db", str(db)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx2.get(base + "/models", timeout=1)
                break
            except httpx2.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.05)
        upstream.push(memory_reply("Got it.", "User's dog is called Biscuit"))
        body = {"model": "m", "messages": user_message("My dog is Biscuit"), "user": "mona"}
        out = curl(
            base + "/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        )
        assert json.loads(out.stdout)["choices"][0]["message"]["content"] == "Got it."
        upstream.push("Biscuit.")
        body["messages"] = user_message("What is my dog's name?")
        curl(
            base + "/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        )
        assert injected(upstream.chat_requests()[-1]) == ["User's dog is called Biscuit"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        # uvicorn ends by the signal it stopped for, after the lifespan's flush
        assert proc.returncode in (0, -signal.SIGTERM), err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    store = MemoryStore.open(db)
    try:
        assert [m.text for m in store.get_all("mona")] == ["User's dog is called Biscuit"]
    finally:
        store.close()


def test_serve_command_max_prompt_tokens_fits_what_it_forwards(
    upstream: Upstream, tmp_path: Path
) -> None:
    """``--max-prompt-tokens``: a conversation far over the budget is forwarded within it,
    counted as the wrappers count (protocol/budget.py): the newest turns, the memory and the
    instruction kept, the oldest turns dropped."""
    upstream.reset()
    budget = 600
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "HEADROOM_SERVER_KEY"}
    args = ["--upstream", upstream.base_url, "--port", str(port), "--db", str(tmp_path / "db")]
    proc = subprocess.Popen(
        [*SERVE, *args, "--max-prompt-tokens", str(budget)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-caller", max_retries=0
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.05)
        upstream.push(memory_reply("Got it.", "User's dog is called Biscuit"))
        client.chat.completions.create(
            model="m", messages=user_message("My dog is Biscuit"), user="mona"
        )
        history: list[dict[str, str]] = []
        for i in range(40):
            history += [
                {"role": "user", "content": f"Tell me fact {i} about the sea. " * 6},
                {"role": "assistant", "content": f"Fact {i}: the sea is deep and wide. " * 6},
            ]
        sent = [*history, *user_message("What is my dog's name?")]
        counter = resolve_counter(None)  # the wrappers' default, as in the server's process
        assert chat_prompt_tokens(sent, counter) > 4 * budget
        upstream.push("Biscuit.")
        answer = client.chat.completions.create(model="m", messages=sent, user="mona")
        assert answer.choices[0].message.content == "Biscuit."
        forwarded = upstream.chat_requests()[-1]["messages"]
        assert chat_prompt_tokens(forwarded, counter) <= budget
        assert forwarded[-1] == sent[-1] and len(forwarded) < len(sent)
        assert injected(upstream.chat_requests()[-1]) == ["User's dog is called Biscuit"]
        assert INSTRUCTION_MESSAGE in forwarded
        kept = [m for m in forwarded if m in history]
        assert kept == history[len(history) - len(kept) :]  # the newest turns, in order
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGTERM), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serve_command_usage_errors(tmp_path: Path) -> None:
    bad = subprocess.run(
        [*SERVE, "--upstream", "ftp://x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--upstream" in bad.stderr
    for budget in ("0", "-5", "many"):
        bad = subprocess.run(
            [*SERVE, "--upstream", "http://127.0.0.1:9/v1", "--max-prompt-tokens", budget],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2 and "--max-prompt-tokens" in bad.stderr, bad.stderr
    keys = tmp_path / "keys.json"
    keys.write_text("[1, 2]")
    db = str(tmp_path / "db")
    bad = subprocess.run(
        [*SERVE, "--upstream", "http://127.0.0.1:9/v1", "--user-keys", str(keys), "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "keys.json" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        bad = subprocess.run(
            [*SERVE, "--upstream", "http://127.0.0.1:9/v1", "--port", port, "--db", db],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in bad.stderr
