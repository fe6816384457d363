"""OpenAIEmbedder through the real openai SDK against a local OpenAI-compatible HTTP server.

The server (http.server in a thread on 127.0.0.1, port 0) answers ``POST /v1/embeddings``
with deterministic vectors derived from each input, honours ``dimensions`` and
``encoding_format``, records every request, and can be told to fail the next requests with a
given status (429, 500, 400).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import openai
import pytest

from headroom.memory.embedders import Embedder, OpenAIEmbedder, get_embedder
from headroom.memory.errors import EmbedderError, InvalidInputError, InvalidTypeError


def vector_for(text: str, dim: int) -> np.ndarray:
    """The server's (unnormalised) vector for ``text``: seeded by a hash of the text."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32) * 3.0


class EmbeddingServer:
    """A threaded local server; ``fail(status, n)`` makes the next ``n`` requests fail."""

    def __init__(self, native_dim: int = 1536) -> None:
        self.native_dim = native_dim
        self.requests: list[dict[str, Any]] = []
        self.failures: list[int] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    status = server.failures.pop(0) if server.failures else 200
                if status != 200:
                    self._send(
                        status,
                        {"error": {"message": f"scripted {status}", "type": "x", "code": None}},
                        {"retry-after": "0"} if status == 429 else {},
                    )
                    return
                dim = body.get("dimensions") or server.native_dim
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = []
                for i, text in enumerate(inputs):
                    vec = vector_for(text, dim)
                    emb: Any = (
                        base64.b64encode(vec.tobytes()).decode()
                        if body.get("encoding_format") == "base64"
                        else vec.tolist()
                    )
                    data.append({"object": "embedding", "index": i, "embedding": emb})
                data.reverse()  # the SDK contract is by index, not by order
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": data,
                        "model": body["model"],
                        "usage": {"prompt_tokens": 1, "total_tokens": 1},
                    },
                )

            def _send(
                self, status: int, payload: Any, headers: dict[str, str] | None = None
            ) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def fail(self, status: int, times: int = 1) -> None:
        with self.lock:
            self.failures.extend([status] * times)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[EmbeddingServer]:
    s = EmbeddingServer()
    yield s
    s.close()


@pytest.fixture
def client(server: EmbeddingServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="test-key", base_url=server.base_url, max_retries=3)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_default_model_dims_and_vectors(server: EmbeddingServer, client: openai.OpenAI) -> None:
    emb = OpenAIEmbedder(client, backoff=0.0)
    assert isinstance(emb, Embedder)
    assert emb.dim == 1536 and emb.model_id == "openai/text-embedding-3-small@1536"
    out = emb.embed(["I prefer Python", "We use PostgreSQL"])
    assert out.shape == (2, 1536) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out[0], _unit(vector_for("I prefer Python", 1536)), atol=1e-6)
    np.testing.assert_allclose(out[1], _unit(vector_for("We use PostgreSQL", 1536)), atol=1e-6)
    assert server.requests[0]["model"] == "text-embedding-3-small"
    assert "dimensions" not in server.requests[0]


def test_dimensions_are_sent_and_checked(server: EmbeddingServer, client: openai.OpenAI) -> None:
    emb = OpenAIEmbedder(client, model="text-embedding-3-large", dimensions=256)
    assert emb.model_id == "openai/text-embedding-3-large@256"
    assert emb.embed(["x"]).shape == (1, 256)
    assert server.requests[-1]["dimensions"] == 256
    # A server that answers with another size is an error, never silent garbage.
    server.native_dim = 100
    wrong = OpenAIEmbedder(client, model="text-embedding-3-small")
    with pytest.raises(EmbedderError, match="100-dim"):
        wrong.embed(["x"])


def test_unknown_model_learns_its_dim(server: EmbeddingServer, client: openai.OpenAI) -> None:
    server.native_dim = 768
    emb = OpenAIEmbedder(client, model="nomic-embed-text")
    assert emb.dim == 768 and emb.model_id == "openai/nomic-embed-text@768"
    assert len(server.requests) == 1


def test_batching_keeps_order(server: EmbeddingServer, client: openai.OpenAI) -> None:
    emb = OpenAIEmbedder(client, batch_size=4)
    texts = [f"memory {i}" for i in range(10)]
    out = emb.embed(texts)
    assert [len(r["input"]) for r in server.requests] == [4, 4, 2]
    for i, text in enumerate(texts):
        np.testing.assert_allclose(out[i], _unit(vector_for(text, 1536)), atol=1e-6)


def test_rate_limit_is_retried(server: EmbeddingServer, client: openai.OpenAI) -> None:
    emb = OpenAIEmbedder(client, backoff=0.01)
    server.fail(429)
    server.fail(503)
    out = emb.embed(["after a 429"])
    np.testing.assert_allclose(out[0], _unit(vector_for("after a 429", 1536)), atol=1e-6)
    assert len(server.requests) == 3  # the SDK's own retries are off: ours are the only ones


def test_server_error_surfaces_as_embedder_error(
    server: EmbeddingServer, client: openai.OpenAI
) -> None:
    emb = OpenAIEmbedder(client, max_retries=2, backoff=0.01)
    server.fail(500, times=3)
    with pytest.raises(EmbedderError, match="after 3 attempts"):
        emb.embed(["x"])
    assert len(server.requests) == 3
    server.fail(400)  # not retryable: one request, typed error
    with pytest.raises(EmbedderError):
        emb.embed(["y"])
    assert len(server.requests) == 4


def test_awkward_input(server: EmbeddingServer, client: openai.OpenAI) -> None:
    emb = OpenAIEmbedder(client, max_input_bytes=50)
    out = emb.embed(["", "\ud800 lone", "日本語" * 40, "emoji 😀"])
    assert out.shape == (4, 1536) and np.isfinite(out).all()
    sent = server.requests[-1]["input"]
    assert sent[0] == " " and sent[1] == "\ufffd lone"
    assert len(sent[2].encode("utf-8")) <= 50 and sent[2] == "日本語" * 5 + "日"
    with pytest.raises(InvalidTypeError):
        emb.embed([1])  # type: ignore[list-item]
    with pytest.raises(InvalidTypeError):
        emb.embed("a string")
    with pytest.raises(InvalidInputError):
        OpenAIEmbedder(client, dimensions=0)


def test_get_embedder_shares_one_instance_per_configuration(client: openai.OpenAI) -> None:
    a = get_embedder(use_local=False, client=client)
    b = get_embedder(use_local=False, client=client)
    c = get_embedder(use_local=False, client=client, dimensions=512)
    assert a is b and a is not c
    assert isinstance(a, OpenAIEmbedder) and a.model == "text-embedding-3-small"
    assert c.model_id == "openai/text-embedding-3-small@512"
    local = get_embedder()
    assert local is get_embedder(model="sentence-transformers/all-MiniLM-L6-v2")
    assert local.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(InvalidInputError):
        get_embedder(model="bert-base-uncased")


def test_without_a_client_uses_base_url(server: EmbeddingServer) -> None:
    emb = get_embedder(use_local=False, base_url=server.base_url, api_key="k", dimensions=64)
    assert emb.embed(["hello"]).shape == (1, 64)
    sent = server.requests[-1]
    assert sent["input"] == ["hello"] and sent["dimensions"] == 64
    assert sent["model"] == "text-embedding-3-small"
    with pytest.raises(InvalidInputError):
        OpenAIEmbedder(openai.OpenAI(api_key="k"), base_url=server.base_url)


def test_no_api_key_is_an_embedder_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # No client given and no key in the environment: the SDK refuses to build a client; the
    # library says so with its own typed error, not the SDK's.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    embedder = OpenAIEmbedder(None, model="text-embedding-3-small")
    with pytest.raises(EmbedderError, match="OpenAI client"):
        embedder.embed(["hello"])
