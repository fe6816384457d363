"""A corpus of real English sentences with their MiniLM vectors, for recall measurements.

Recall of an approximate index means something only on real embeddings (on random vectors
every HNSW looks broken), so the store benchmark searches sentences taken from the docstrings
of the Python packages installed beside it, embedded with the project's own MiniLM embedder.

Contracts:
- :func:`extract_sentences` is deterministic for a given set of installed files: it walks the
  roots in order (default: this interpreter's site-packages, then its standard library), files
  sorted by path, takes the docstrings of modules, classes and functions (``ast``, never
  importing anything), drops doctest lines and section underlines, splits paragraphs into
  sentences, keeps those of 5 to 60 words that are mostly letters, and drops duplicates
  (case and whitespace ignored). It stops at ``limit``, so the first ``n`` sentences of a longer
  extraction are exactly the extraction of ``n``.
- :func:`load_corpus` returns ``n`` sentences and their unit-length float32 vectors. Sentences
  and vectors are cached under ``bench/results/cache/corpus/`` (gitignored; never committed); a
  cache holding at least ``n`` sentences for the same model is reused (its first ``n``), so a
  corpus is embedded once per machine.
- :meth:`Corpus.split` draws disjoint memories and queries with a seeded generator.

Run ``python -m bench.corpus --size 60000`` to build the cache ahead of a benchmark.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import sysconfig
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.common import RESULTS_DIR, progress
from headroom.memory.embedders.base import Embedder
from headroom.memory.errors import InvalidInputError

#: Where corpora are cached (under the gitignored results folder).
CACHE_DIR = RESULTS_DIR / "cache" / "corpus"
#: Words per kept sentence, inclusive.
MIN_WORDS, MAX_WORDS = 5, 60
#: Share of a sentence's non-space characters that must be letters (drops code and formulas).
MIN_LETTER_SHARE = 0.75
#: Texts handed to the embedder per call (it batches and length-sorts inside).
EMBED_CHUNK = 2048

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PARAGRAPH = re.compile(r"\n\s*\n")
_UNDERLINE = re.compile(r"^\s*[-=~^*#+]{3,}\s*$")
_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.)")
_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def default_roots() -> list[Path]:
    """This interpreter's site-packages, then its standard library."""
    paths = sysconfig.get_paths()
    return [Path(paths["purelib"]), Path(paths["stdlib"])]


def _docstrings(source: bytes) -> Iterator[str]:
    """Every module, class and function docstring of one Python source file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in old sources
            tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return
    for node in ast.walk(tree):
        if isinstance(node, _DOCSTRING_OWNERS):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def sentences_of(doc: str) -> Iterator[str]:
    """The candidate sentences of one docstring (whitespace-normalised, not yet filtered)."""
    for paragraph in _PARAGRAPH.split(doc):
        lines = [
            line
            for line in paragraph.splitlines()
            if not _DOCTEST.match(line) and not _UNDERLINE.match(line)
        ]
        text = " ".join(" ".join(lines).split())
        if text:
            yield from _SENTENCE_END.split(text)


def keep_sentence(sentence: str) -> bool:
    """True for a sentence of 5 to 60 words that is mostly letters."""
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    chars = [c for c in sentence if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    return letters >= MIN_LETTER_SHARE * len(chars)


def extract_sentences(limit: int, roots: Sequence[Path] | None = None) -> list[str]:
    """Up to ``limit`` distinct docstring sentences from the ``.py`` files under ``roots``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(f"limit must be an int >= 1; got {limit!r}")
    seen: set[str] = set()
    out: list[str] = []
    for root in roots if roots is not None else default_roots():
        for path in sorted(root.rglob("*.py")):
            try:
                source = path.read_bytes()
            except OSError:
                continue
            for doc in _docstrings(source):
                for sentence in sentences_of(doc):
                    key = sentence.casefold()
                    if key in seen or not keep_sentence(sentence):
                        continue
                    seen.add(key)
                    out.append(sentence)
                    if len(out) >= limit:
                        return out
    return out


@dataclass(frozen=True)
class Corpus:
    """Sentences and their vectors (row ``i`` embeds ``sentences[i]``)."""

    sentences: list[str]
    vectors: npt.NDArray[np.float32]
    model_id: str

    def __len__(self) -> int:
        return len(self.sentences)

    def split(
        self, n_memories: int, n_queries: int, seed: int = 0
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Disjoint random ``(memories, queries)`` vectors; raises when the corpus is short."""
        if n_memories < 0 or n_queries < 0 or n_memories + n_queries > len(self):
            raise InvalidInputError(
                f"cannot draw {n_memories} memories and {n_queries} queries from a corpus "
                f"of {len(self)} sentences"
            )
        order = np.random.default_rng(seed).permutation(len(self))
        queries = self.vectors[np.sort(order[:n_queries])]
        memories = self.vectors[np.sort(order[n_queries : n_queries + n_memories])]
        return np.ascontiguousarray(memories), np.ascontiguousarray(queries)


def _model_slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)


def _find_cache(folder: Path, model_id: str, n: int) -> Path | None:
    """The smallest cached corpus of this model holding at least ``n`` sentences."""
    best: tuple[int, Path] | None = None
    if not folder.is_dir():
        return None
    for meta_file in folder.glob(f"{_model_slug(model_id)}-*/meta.json"):
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            size = int(meta["size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if meta.get("model_id") == model_id and size >= n and (best is None or size < best[0]):
            best = (size, meta_file.parent)
    return best[1] if best else None


def _read_cache(path: Path, n: int, model_id: str) -> Corpus | None:
    try:
        sentences = json.loads((path / "sentences.json").read_text(encoding="utf-8"))
        vectors = np.load(path / "vectors.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if not isinstance(sentences, list) or vectors.shape[0] != len(sentences):
        return None  # a torn cache is ignored and rebuilt
    return Corpus(sentences[:n], np.ascontiguousarray(vectors[:n], np.float32), model_id)


def embed_all(embedder: Embedder, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """Vectors of ``texts`` in order, embedded in length-sorted chunks (fewer padded tokens)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    starts = range(0, len(order), EMBED_CHUNK)
    for start in progress(starts, "embedding corpus", total=len(starts)):
        rows = order[start : start + EMBED_CHUNK]
        out[rows] = embedder.embed([texts[i] for i in rows])
    return out


def _write_cache(folder: Path, corpus: Corpus, seconds: float) -> None:
    """Write atomically: every file to a temp name, the meta file last (the commit point)."""
    path = folder / f"{_model_slug(corpus.model_id)}-{len(corpus)}"
    path.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256("\n".join(corpus.sentences).encode("utf-8", "replace")).hexdigest()
    (path / "sentences.tmp.json").write_text(json.dumps(corpus.sentences), encoding="utf-8")
    (path / "sentences.tmp.json").replace(path / "sentences.json")
    with open(path / "vectors.tmp.npy", "wb") as fh:
        np.save(fh, corpus.vectors)
    (path / "vectors.tmp.npy").replace(path / "vectors.npy")
    meta = {
        "model_id": corpus.model_id,
        "size": len(corpus),
        "sha256": digest,
        "embed_seconds": round(seconds, 1),
    }
    (path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def load_corpus(
    n: int,
    embedder: Embedder | None = None,
    cache_dir: Path | None = None,
    *,
    model_id: str | None = None,
) -> Corpus:
    """``n`` real sentences with their vectors, from the cache or extracted and embedded now.

    ``embedder`` defaults to the project's MiniLM (two intra-op threads: this is set-up, not a
    measurement). ``model_id`` names the model when no embedder is given (the cache is looked
    up without loading the model). Raises InvalidInputError when the installed packages hold
    fewer than ``n`` usable sentences.
    """
    folder = cache_dir or CACHE_DIR
    if embedder is None and model_id is None:
        from headroom.memory.embedders import MODEL_ID

        model_id = MODEL_ID
    wanted_id = embedder.model_id if embedder is not None else str(model_id)
    cached = _find_cache(folder, wanted_id, n)
    if cached is not None:
        corpus = _read_cache(cached, n, wanted_id)
        if corpus is not None:
            return corpus
    sentences = extract_sentences(n)
    if len(sentences) < n:
        raise InvalidInputError(
            f"the installed packages hold only {len(sentences)} usable sentences; asked for {n}"
        )
    if embedder is None:
        from headroom.memory.embedders import get_embedder

        embedder = get_embedder(threads=2, batch_size=64, cache_size=0)
    t0 = time.perf_counter()
    vectors = embed_all(embedder, sentences)
    corpus = Corpus(sentences, vectors, embedder.model_id)
    _write_cache(folder, corpus, time.perf_counter() - t0)
    return corpus


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or check) the cached corpus: ``python -m bench.corpus --size N``."""
    parser = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__)
    parser.add_argument("--size", type=int, default=60_000, help="sentences (default 60000)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    corpus = load_corpus(args.size)
    print(
        f"{len(corpus)} sentences, vectors {corpus.vectors.shape} ({corpus.model_id}) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())


class CorpusEmbedder:
    """An :class:`~headroom.memory.embedders.base.Embedder` serving cached corpus vectors.

    Used only to pre-fill a store: the vectors are the real MiniLM vectors of the corpus
    sentences, so ``model_id`` is the corpus's model. A text not in the corpus raises
    InvalidInputError (this embedder never computes a vector).
    """

    def __init__(
        self, texts: Sequence[str], vectors: npt.NDArray[np.float32], model_id: str
    ) -> None:
        if len(texts) != len(vectors):
            raise InvalidInputError(f"{len(texts)} texts but {len(vectors)} vectors")
        self._rows = {text: i for i, text in enumerate(texts)}
        self._vectors = vectors
        self._model_id = model_id

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        try:
            rows = [self._rows[t] for t in texts]
        except KeyError as exc:
            raise InvalidInputError(f"not a corpus sentence: {exc.args[0]!r}") from None
        return np.ascontiguousarray(self._vectors[rows], dtype=np.float32)
