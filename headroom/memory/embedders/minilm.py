"""all-MiniLM-L6-v2 on onnxruntime + tokenizers: the sentence-transformers pipeline, no torch.

Pipeline: WordPiece (uncased) tokenisation, truncation at 256 tokens including [CLS]/[SEP],
BERT, mean pooling over the attention mask, L2 normalisation (the last three inside one ONNX
graph, see :mod:`.minilm_graph`). Cosine against sentence-transformers >= 0.9999 on every row
of the shared reference set.

Runtime needs onnxruntime, tokenizers and numpy only. The model is found as
:mod:`.resolve` documents and loaded lazily, once, on the first call that needs it (thread-safe).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import EmbedderError, InvalidInputError, ModelNotFoundError
from .graph_cache import graph_bytes
from .int8_probe import int8_sums_exact
from .lru import VectorCache
from .resolve import MODEL_ID, ResolvedModel, resolve
from .text_input import check_texts, clean_text

#: Token limit of all-MiniLM-L6-v2 in sentence-transformers (max_seq_length).
MAX_TOKENS = 256
#: Calls with at most this many texts fill the LRU cache (queries, single adds); larger
#: batches (imports, re-embedding) only read it, so they never evict hot query texts.
CACHE_MAX_BATCH = 16
#: ``query_mode`` values: how :meth:`MiniLMEmbedder.embed_query` runs the model (memories are
#: always embedded in fp32). ``int8``: linear layers on int8 weights and activations.
QUERY_MODES = ("fp32", "int8")
#: The default ``query_mode``: with int8 queries no LoCoMo R@5 or R@10 through the store fell
#: more than 0.005 below fp32 queries (facts and turns, both splits; docs/embedder.md).
DEFAULT_QUERY_MODE = "int8"
#: Sessions inherited from a parent process across fork; see MiniLMEmbedder._get_runtime.
_FORKED_AWAY: list[object] = []


class _Runtime:
    """A loaded tokenizer and onnxruntime session; ``run`` embeds texts (no cache)."""

    def __init__(
        self, model: ResolvedModel, threads: int, max_tokens: int, linear: str = "fp32"
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model = model
        self.pid = os.getpid()
        try:
            tokenizer = Tokenizer.from_file(str(model.tokenizer))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise ModelNotFoundError(f"cannot load {model.tokenizer}: {exc}") from None
        # The shipped tokenizer.json pads to 128 and truncates at 128: both wrong for us.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer = tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # EXTENDED, not ALL: ALL's layout transforms cost more CPU per text than they save on
        # this graph (bench/README.md).
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.log_severity_level = 3
        if threads > 1:  # spinning workers burn a core each between calls on busy servers
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(model.folder)
        )
        try:
            self.session: Any = ort.InferenceSession(
                graph_bytes(model, linear), opts, providers=["CPUExecutionProvider"]
            )
        except ModelNotFoundError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelNotFoundError(f"cannot load the model in {model.folder}: {exc}") from None
        self.dim = int(self.session.get_outputs()[0].shape[1])

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer.encode(clean_text(t)).ids for t in texts]

    def run(self, texts: Sequence[str], batch_size: int) -> npt.NDArray[np.float32]:
        """Embed ``texts`` in length-sorted batches of at most ``batch_size``."""
        ids = self._ids(texts)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            try:
                (vectors,) = self.session.run(
                    None, {"input_ids": input_ids, "attention_mask": mask}
                )
            except Exception as exc:
                raise EmbedderError(f"onnxruntime failed: {exc}") from exc
            out[rows] = vectors
        return out


class MiniLMEmbedder:
    """Local all-MiniLM-L6-v2 embedder (384 dims); see the module docstring.

    Args:
        model_path: model folder to use (first in the resolution order); None to resolve.
        threads: onnxruntime intra-op threads (default 1: servers run many workers).
        batch_size: texts per model call when embedding many texts.
        cache_size: entries of the LRU cache of text vectors (0 disables it); the query path
            of a non-fp32 ``query_mode`` has its own cache of the same size.
        max_tokens: truncation length in tokens (256, as sentence-transformers).
        model_id: override the recorded model id (only for weights other than the stock
            all-MiniLM-L6-v2 in the same layout, e.g. a fine-tune).
        warmup: load the model (and the query model) and run one text now instead of at the
            first call.
        query_mode: how :meth:`embed_query` runs the model, one of :data:`QUERY_MODES`.
            ``"fp32"``: exactly :meth:`embed`. ``"int8"`` (the default): a second graph whose
            linear layers run on int8 (weights quantized per output channel when the graph is
            built, activations per call): vectors close to, not equal to, the fp32 ones, for
            a fraction of the CPU (docs/embedder.md states the parity, speed and retrieval
            figures). Where onnxruntime's int8 sums would saturate on this CPU
            (:mod:`.int8_probe`), int8 queries run in fp32 instead (:attr:`query_path`).
            :meth:`embed` (what the store stores) is fp32 in every mode, so ``model_id``
            does not depend on the mode.

    Thread-safe: the first load happens once however many threads call at the same time.
    Fork-safe: a forked child loads its own session on first use (the parent's is not reused).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        threads: int = 1,
        batch_size: int = 32,
        cache_size: int = 1024,
        max_tokens: int = MAX_TOKENS,
        model_id: str | None = None,
        warmup: bool = False,
        query_mode: str = DEFAULT_QUERY_MODE,
    ) -> None:
        for name, value, low in (
            ("threads", threads, 1),
            ("batch_size", batch_size, 1),
            ("cache_size", cache_size, 0),
            ("max_tokens", max_tokens, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{name} must be an int >= {low}; got {value!r}")
        if max_tokens > 512:
            raise InvalidInputError(f"max_tokens must be <= 512 (BERT positions); got {max_tokens}")
        if query_mode not in QUERY_MODES:
            raise InvalidInputError(f"query_mode must be one of {QUERY_MODES}; got {query_mode!r}")
        self._model_path = model_path
        self._threads = threads
        self._batch_size = batch_size
        self._max_tokens = max_tokens
        self._query_mode = query_mode
        self._model_id = model_id or (
            MODEL_ID if max_tokens == MAX_TOKENS else f"{MODEL_ID}@max{max_tokens}"
        )
        self._cache = VectorCache(cache_size)
        self._query_cache = VectorCache(cache_size) if query_mode != "fp32" else self._cache
        self._lock = threading.Lock()
        self._runtimes: dict[str, _Runtime] = {}
        self._dim: int | None = None
        if warmup:
            self.warmup()

    @property
    def model_id(self) -> str:
        """``sentence-transformers/all-MiniLM-L6-v2`` (or the ``model_id`` given)."""
        return self._model_id

    @property
    def query_mode(self) -> str:
        """How :meth:`embed_query` runs the model (see the class docstring)."""
        return self._query_mode

    @property
    def query_path(self) -> str:
        """What :meth:`embed_query` runs: ``query_mode``, or ``"fp32"`` where int8 cannot run
        exactly on this CPU (decided once per process by :func:`.int8_probe.int8_sums_exact`).
        """
        if self._query_mode == "int8" and not int8_sums_exact():
            return "fp32"
        return self._query_mode

    def vector_key(self) -> tuple[str, ...]:
        """What :meth:`embed_query`'s vectors depend on besides the text, as strings (keys
        derived data such as :mod:`.query_bank`'s): the model id, the weights' layout
        fingerprint, the graph version, :attr:`query_path`, truncation, threads, batch size
        and the onnxruntime version. Resolves the model without loading it."""
        import onnxruntime

        from .graph_cache import GRAPH_VERSION
        from .safetensors_header import read_header

        fingerprint = read_header(self.resolved.weights).fingerprint
        return (
            self._model_id,
            fingerprint,
            f"graph-v{GRAPH_VERSION}",
            self.query_path,
            f"max_tokens={self._max_tokens}",
            f"threads={self._threads}",
            f"batch_size={self._batch_size}",
            f"onnxruntime={onnxruntime.__version__}",
        )

    @property
    def _runtime(self) -> _Runtime | None:
        return self._runtimes.get("fp32")

    @property
    def dim(self) -> int:
        """Vector length (384), read from the model's config without loading the model."""
        if self._dim is None:
            if self._runtime is not None:
                self._dim = self._runtime.dim
            else:
                cfg = resolve(self._model_path).folder / "config.json"
                try:
                    self._dim = int(json.loads(cfg.read_text("utf-8"))["hidden_size"])
                except (OSError, ValueError, KeyError) as exc:
                    raise ModelNotFoundError(f"cannot read {cfg}: {exc}") from None
        return self._dim

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def cache(self) -> VectorCache:
        """The LRU cache of text vectors (its ``hits``/``misses`` are counters)."""
        return self._cache

    @property
    def query_cache(self) -> VectorCache:
        """The cache :meth:`embed_query` uses (:attr:`cache` itself in ``"fp32"`` mode)."""
        return self._query_cache

    @property
    def loaded(self) -> bool:
        return self._runtime is not None

    @property
    def resolved(self) -> ResolvedModel:
        """Where the model comes from (resolves without loading it)."""
        if self._runtime is not None:
            return self._runtime.model
        return resolve(self._model_path)

    def load(self) -> None:
        """Resolve and load the model now (idempotent, thread-safe)."""
        self._get_runtime()

    def warmup(self) -> None:
        """Load the model(s) and embed one text, so the first real call pays no start-up cost."""
        self._get_runtime().run(["warm up"], 1)
        if self.query_path != "fp32":
            self._get_runtime(self.query_path).run(["warm up"], 1)

    def _get_runtime(self, linear: str = "fp32") -> _Runtime:
        runtime = self._runtimes.get(linear)
        if runtime is None or runtime.pid != os.getpid():
            with self._lock:
                runtime = self._runtimes.get(linear)
                if runtime is None or runtime.pid != os.getpid():
                    # First use, or first use in a forked child: onnxruntime's thread pools do
                    # not survive fork, so a child loads its own session. The parent's session
                    # is kept, never destroyed: its destructor would join threads that do not
                    # exist in the child and hang.
                    if runtime is not None:
                        _FORKED_AWAY.append(runtime)
                    model = resolve(self._model_path)
                    runtime = _Runtime(model, self._threads, self._max_tokens, linear)
                    self._dim = runtime.dim
                    self._runtimes[linear] = runtime
        return runtime

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` into a ``(len(texts), dim)`` float32 array of unit rows (fp32 model).

        Bad input: a non-str element raises InvalidTypeError. Empty strings embed ([CLS]
        [SEP] only); texts past 256 tokens are truncated; lone surrogates become U+FFFD.
        """
        return self._embed(texts, "fp32", self._cache)

    def embed_query(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed search queries: :meth:`embed`'s contract, the model run in ``query_mode``.

        In ``"fp32"`` mode this is :meth:`embed` (same vectors, same cache). In ``"int8"`` mode
        each text runs alone (activations are quantized per run, so a batch would couple rows).
        """
        return self._embed(texts, self.query_path, self._query_cache)

    def _embed(
        self, texts: Sequence[str], linear: str, cache: VectorCache
    ) -> npt.NDArray[np.float32]:
        items = check_texts(texts)
        runtime = self._get_runtime(linear)
        out = np.empty((len(items), runtime.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        for i, text in enumerate(items):
            hit = cache.get(text)
            if hit is not None:
                out[i] = hit
            else:
                missing.setdefault(text, []).append(i)
        if missing:
            todo = list(missing)
            # int8 quantizes activations over the whole batch: one text per run keeps a row
            # independent of its batch (the Embedder contract).
            vectors = runtime.run(todo, self._batch_size if linear == "fp32" else 1)
            fill = len(items) <= CACHE_MAX_BATCH
            for text, vec in zip(todo, vectors, strict=True):
                out[missing[text]] = vec
                if fill:
                    cache.put(text, vec)
        return out
