"""OpenAI embeddings (or any OpenAI-compatible server) through the user's own sync client.

Texts go out in batches (at most ``batch_size`` inputs and about 250 KB per request). A rate
limit (429), a server error (5xx), a timeout or a dropped connection is retried with
exponential backoff and jitter (honouring ``Retry-After`` up to ``max_backoff``); anything else,
or running out of retries, raises EmbedderError. The client's own retries are turned off for
these calls (``client.with_options(max_retries=0)``) so the policy here is the only one.

Input the API refuses is made acceptable: an empty string is sent as one space, lone
surrogates become U+FFFD, and a text is cut to ``max_input_bytes`` UTF-8 bytes (8191 by
default: every token of OpenAI's byte-level tokenizers covers at least one byte, so this stays
within the 8191-token input limit). Returned rows are L2-normalised here, because not every
compatible server normalises.
"""

from __future__ import annotations

import base64
import contextlib
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import EmbedderError, InvalidInputError
from .text_input import check_texts, clean_text

DEFAULT_MODEL = "text-embedding-3-small"
#: Native dimensions of OpenAI's embedding models.
KNOWN_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_MAX_REQUEST_BYTES = 250_000


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


class OpenAIEmbedder:
    """Embeddings from ``client.embeddings.create``.

    Args:
        client: an ``openai.OpenAI`` (or compatible) client; None creates ``openai.OpenAI()``
            on first use, with ``base_url``/``api_key`` when given (else the SDK reads
            ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``).
        model: the embedding model name.
        dimensions: sent as ``dimensions`` (text-embedding-3 models can shorten vectors).
            When None, the dimension is the model's native one if known, else learned from
            the first response (``dim`` then makes one call if asked first).
        batch_size: most inputs per request (the API allows 2048).
        max_retries: retries after the first attempt for 429, 5xx, timeouts, connection drops.
        backoff: first retry delay in seconds, doubled each retry (with jitter).
        max_backoff: longest single delay in seconds.
        max_input_bytes: per-text cut, in UTF-8 bytes.
        model_id: override the recorded id (default ``openai/<model>@<dim>``).
        base_url, api_key: for the client created when ``client`` is None.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        model: str = DEFAULT_MODEL,
        dimensions: int | None = None,
        batch_size: int = 256,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        max_input_bytes: int = 8191,
        model_id: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise InvalidInputError(f"model must be a non-empty str; got {model!r}")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise InvalidInputError(f"dimensions must be a positive int; got {dimensions!r}")
        if client is not None and (base_url is not None or api_key is not None):
            raise InvalidInputError("give either client or base_url/api_key, not both")
        if not 1 <= batch_size <= 2048 or max_retries < 0 or backoff < 0 or max_input_bytes < 1:
            raise InvalidInputError("batch_size, max_retries, backoff or max_input_bytes is bad")
        self._client = client
        self._base_url = base_url
        self._api_key = api_key
        self._model = model
        self._dimensions = dimensions
        self._dim: int | None = dimensions or KNOWN_DIMS.get(model)
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._max_input_bytes = max_input_bytes
        self._model_id = model_id
        self._lock = threading.Lock()
        self._api: Any = None

    @property
    def model(self) -> str:
        return self._model

    @property
    def model_id(self) -> str:
        """``openai/<model>@<dim>`` unless overridden."""
        return self._model_id or f"openai/{self._model}@{self.dim}"

    @property
    def dim(self) -> int:
        """Vector length; for an unknown model without ``dimensions``, one probe call."""
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def _embeddings_api(self) -> Any:
        if self._api is None:
            with self._lock:
                if self._api is None:
                    client = self._client
                    if client is None:
                        import openai

                        try:
                            client = openai.OpenAI(
                                api_key=self._api_key, base_url=self._base_url, max_retries=0
                            )
                        except openai.OpenAIError as exc:  # e.g. no OPENAI_API_KEY
                            raise EmbedderError(f"cannot create the OpenAI client: {exc}") from None
                    elif hasattr(client, "with_options"):
                        client = client.with_options(max_retries=0)
                    self._api = client.embeddings
        return self._api

    def _batches(self, texts: list[str]) -> list[list[str]]:
        batches: list[list[str]] = [[]]
        size = 0
        for text in texts:
            n = len(text.encode("utf-8"))
            if batches[-1] and (
                len(batches[-1]) >= self._batch_size or size + n > _MAX_REQUEST_BYTES
            ):
                batches.append([])
                size = 0
            batches[-1].append(text)
            size += n
        return batches

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` into a ``(len(texts), dim)`` float32 array of unit rows."""
        items = [
            _truncate_utf8(clean_text(t), self._max_input_bytes) or " " for t in check_texts(texts)
        ]
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        parts = [self._request(batch) for batch in self._batches(items)]
        out = np.ascontiguousarray(np.vstack(parts), dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def _request(self, batch: list[str]) -> npt.NDArray[np.float32]:
        import openai

        kwargs: dict[str, Any] = {"model": self._model, "input": batch}
        if self._dimensions is not None:
            kwargs["dimensions"] = self._dimensions
        api = self._embeddings_api()
        attempt = 0
        while True:
            try:
                response = api.create(**kwargs)
                break
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APITimeoutError,
                openai.APIConnectionError,
            ) as exc:
                if attempt >= self._max_retries:
                    raise EmbedderError(
                        f"embedding request failed after {attempt + 1} attempts: {exc}"
                    ) from exc
                time.sleep(self._delay(attempt, exc))
                attempt += 1
            except openai.OpenAIError as exc:
                raise EmbedderError(f"embedding request failed: {exc}") from exc
        return self._parse(response, len(batch))

    def _delay(self, attempt: int, exc: Exception) -> float:
        delay = self._backoff * (2**attempt) * (0.5 + random.random() / 2)
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = max(delay, float(retry_after))
        return float(min(delay, self._max_backoff))

    def _parse(self, response: Any, n: int) -> npt.NDArray[np.float32]:
        try:
            data = sorted(response.data, key=lambda d: d.index)
            rows = [
                np.frombuffer(base64.b64decode(d.embedding), dtype=np.float32)
                if isinstance(d.embedding, str)
                else np.asarray(d.embedding, dtype=np.float32)
                for d in data
            ]
            out = np.vstack(rows) if rows else np.empty((0, 0), dtype=np.float32)
        except (AttributeError, TypeError, ValueError) as exc:
            raise EmbedderError(f"malformed embeddings response: {exc}") from exc
        if out.shape[0] != n:
            raise EmbedderError(f"asked for {n} embeddings, the server returned {out.shape[0]}")
        if self._dim is None:
            self._dim = int(out.shape[1])
        if out.shape[1] != self._dim:
            raise EmbedderError(
                f"the server returned {out.shape[1]}-dim vectors; expected {self._dim}"
                f" for {self._model}"
            )
        if not np.isfinite(out).all():
            raise EmbedderError("the server returned non-finite values")
        return out
