"""The relevance decision: which of a search's results are worth injecting, per user.

A fixed floor on the search score cannot work across store sizes: the fused score of a
message that is about nothing the user said ("hi", "make it shorter") grows with the number
and kind of memories held (more memories to resemble, centring, the lexical and session
bonuses). So the floor is measured per user, and raised for messages that look generic:

- the user's *background* is what the generic messages of :data:`PROBES` score against this
  user's memories, through the same search the wrapper injects with (:class:`Background`);
- a message's *genericness* is its cosine to the nearest of the generic messages of
  :data:`GENERIC` (:func:`genericness`): about 0.8 for "hi", 0.2 for "What database should I
  use for my new project?";
- the message injects only when its best score reaches :meth:`Background.gate`: the
  ``GATE_QUANTILE`` quantile of the probes' best scores plus ``GATE_BASE`` plus
  ``GATE_SLOPE`` times its genericness; then each result at or above
  :attr:`Background.floor` (the ``FLOOR_QUANTILE`` quantile plus ``FLOOR_MARGIN``) goes in.

The background is a difference of scores of one user, the genericness a cosine between two
queries embedded alike, so int8 and fp32 query embeddings give the same decisions within
their noise. The constants were chosen with MiniLM; the figures that chose them, and every
rule measured against them, are in bench/README.md, section "`injection`: the relevance
decision" (``python -m bench injection``).

:class:`Calibration` keeps each user's background per store and measures it again when the
user's memory count has moved by ``REFRESH_FACTOR`` since (24 searches, never on every
call; edits that keep the count keep the background): on the user's first call in a
process, and after that mostly right after the inline writer or the extraction worker
stores their memories (:func:`after_write`), so the next call does not wait for it. The
generic messages' vectors are made once per process and embedder: for MiniLM read from a
file beside the model's graphs (written by ``headroom-memory model download``, or by the
first process that needs them), so a process's first call does not embed 108 texts.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .. import process
from ..embedders.base import Embedder, embed_queries
from ..embedders.minilm import CACHE_MAX_BATCH
from ..embedders.query_bank import query_vectors
from ..types import Memory

if TYPE_CHECKING:
    from ..store.store import MemoryStore

logger = logging.getLogger("headroom.memory")

__all__ = [
    "GENERIC",
    "PROBES",
    "Background",
    "Calibration",
    "after_write",
    "background_of",
    "calibration",
    "generic_vectors",
    "genericness",
    "relevant",
    "select",
]

#: Generic messages, about nothing a user could have told us: greetings, thanks, edits of the
#: previous answer, arithmetic, creative and general requests, coding questions about no one's
#: project. A message's genericness is its cosine to the nearest of them. (The injection
#: suite's generic messages are other texts, so the rule is judged on messages it was not
#: built with.)
GENERIC: tuple[str, ...] = (
    # greetings, closings, acknowledgements
    "hello",
    "hi there",
    "hey!",
    "good afternoon",
    "good night",
    "how's it going?",
    "what's up?",
    "thanks",
    "ok, thank you",
    "thanks a lot!",
    "cheers",
    "bye for now",
    "see you later",
    "yes",
    "no",
    "why?",
    "sure, go ahead",
    "okay",
    "nice",
    "that's great",
    "I see",
    "makes sense",
    "hmm",
    "interesting",
    "alright",
    # edits of the previous answer
    "shorten that",
    "rewrite it more formally",
    "fix the typos",
    "make a list of that",
    "make it more concise",
    "expand on the second point",
    "add a title",
    "use simpler words",
    "make it sound more casual",
    "turn this into a numbered list",
    "rephrase the first sentence",
    "add an example",
    "remove the jargon",
    "summarize that in one line",
    "write it as an email",
    "translate it to German",
    "give me a different version",
    "keep going",
    "start over",
    "can you clarify that?",
    "that's wrong, try again",
    # arithmetic and conversions
    "what is 12 plus 45?",
    "what's 30% of 80?",
    "convert 10 km to miles",
    "sort these numbers: 5, 2, 9",
    "what is 144 divided by 12?",
    "what's 7 squared?",
    "how many days are in a leap year?",
    "convert 3 pounds to kilograms",
    "what is 2.5 times 4?",
    "how many hours are in two days?",
    "what is the cube root of 27?",
    "add 19 and 23",
    # creative requests
    "write a poem about rain",
    "tell me a story about a dragon",
    "write a funny tweet",
    "write a song about friendship",
    "tell me a knock-knock joke",
    "write a haiku about winter",
    "invent a name for a superhero",
    "describe a sunset in three sentences",
    "write a short fable",
    "make up a riddle about time",
    "write a slogan for a lemonade stand",
    "compose a short rap about pizza",
    # general knowledge
    "what is the capital of Japan?",
    "how does a rainbow form?",
    "who invented the telephone?",
    "what is the largest ocean?",
    "how long does light take to reach Earth from the Sun?",
    "who was the first person on the Moon?",
    "what causes earthquakes?",
    "how many legs does a spider have?",
    "what is the chemical symbol for gold?",
    "when was the printing press invented?",
    "what language is spoken in Brazil?",
    "why do leaves change colour?",
    "what is gravity?",
    "how do airplanes stay in the air?",
    "what's the longest river in Africa?",
    # coding and tech, unrelated to anyone
    "explain recursion",
    "how do I declare an array in Java?",
    "what is a pointer in C?",
    "how do I write a for loop in Go?",
    "what does SQL JOIN do?",
    "explain what an API is",
    "what is the difference between git merge and rebase?",
    "how do I parse JSON in JavaScript?",
    "what is a race condition?",
    "explain object-oriented programming",
    "what is Docker?",
    "how do I make a div scroll horizontally?",
    "what does O(n log n) mean?",
    "what is a REST endpoint?",
    "write a function that checks if a number is prime",
    # words and language
    "what time zone is GMT+2?",
    "what's the opposite of 'ancient'?",
    "use 'serendipity' in a sentence",
    "how do you pronounce 'quinoa'?",
    "what does 'ubiquitous' mean?",
    "is it 'affect' or 'effect' here?",
    "what's another word for 'big'?",
    "spell 'restaurant'",
)

#: The generic messages searched against a user's memories to measure their background.
PROBES: tuple[str, ...] = (
    "hello",
    "thanks",
    "ok, thank you",
    "good night",
    "how's it going?",
    "yes",
    "why?",
    "sure, go ahead",
    "shorten that",
    "rewrite it more formally",
    "fix the typos",
    "make a list of that",
    "what is 12 plus 45?",
    "what's 30% of 80?",
    "convert 10 km to miles",
    "sort these numbers: 5, 2, 9",
    "write a poem about rain",
    "tell me a story about a dragon",
    "write a funny tweet",
    "what is the capital of Japan?",
    "how does a rainbow form?",
    "what time zone is GMT+2?",
    "explain recursion",
    "how do I declare an array in Java?",
)

#: A message injects only when its best score reaches this quantile of the probes' best
#: scores plus ``GATE_BASE`` plus ``GATE_SLOPE`` times its genericness.
GATE_QUANTILE = 0.9
GATE_BASE = -0.45
GATE_SLOPE = 2.0
#: Once it does, each result at or above this quantile plus ``FLOOR_MARGIN`` is injected.
FLOOR_QUANTILE = 0.5
FLOOR_MARGIN = 0.05
#: The background is measured again when the user's memory count has grown or shrunk by
#: this factor since it was last measured.
REFRESH_FACTOR = 1.25
#: Users whose background one Calibration keeps (least recently used beyond it are dropped).
MAX_USERS = 4096


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (linear interpolation, as numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quantile of no values")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Background:
    """What the probes score against one user's memories, and the two thresholds from it.

    ``count`` is the user's memory count when measured; ``probe_scores`` the best search
    score of each probe (0.0 for a probe that found nothing).
    """

    count: int
    probe_scores: tuple[float, ...]

    def gate(self, genericness: float) -> float:
        """The best score a message of this genericness needs to inject anything."""
        base = quantile(self.probe_scores, GATE_QUANTILE) + GATE_BASE
        return base + GATE_SLOPE * genericness

    @property
    def floor(self) -> float:
        """The score each memory needs to go in once the message has passed the gate."""
        return quantile(self.probe_scores, FLOOR_QUANTILE) + FLOOR_MARGIN

    def is_current(self, count: int) -> bool:
        """Whether a user now holding ``count`` memories may keep this background."""
        if count == self.count:
            return True
        if self.count == 0 or count == 0:
            return False
        return self.count / REFRESH_FACTOR < count < self.count * REFRESH_FACTOR


def select(
    results: Sequence[tuple[Memory, float]], background: Background, genericness: float
) -> list[tuple[Memory, float]]:
    """The results worth injecting for a message of this genericness (the module's rule).

    Pure; keeps the order of ``results``. Empty when the best score is below the gate; else
    every result at or above the floor, and the best one even when the floor is above it.
    """
    scores = [score for _, score in results if not math.isnan(score)]
    if not scores:
        return []
    best = max(scores)
    if best < background.gate(genericness):
        return []
    floor = min(background.floor, best)
    return [(memory, score) for memory, score in results if score >= floor]


class _GenericVectors:
    """The vectors of :data:`GENERIC` per embedder, made once (by one thread: the others wait).

    For MiniLM they come from the bank on disk beside the model's graphs
    (:mod:`..embedders.query_bank`), built here when it is missing or bad and by
    ``headroom-memory model download``; any other embedder embeds them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_embedder: weakref.WeakKeyDictionary[Embedder, npt.NDArray[np.float32]] = (
            weakref.WeakKeyDictionary()
        )
        self._making: weakref.WeakKeyDictionary[Embedder, threading.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def of(self, embedder: Embedder) -> npt.NDArray[np.float32]:
        with self._lock:
            known = self._by_embedder.get(embedder)
            making = self._making.setdefault(embedder, threading.Lock())
        if known is not None:
            return known
        with making:  # one thread makes them; another asking meanwhile waits for it
            with self._lock:
                known = self._by_embedder.get(embedder)
            if known is not None:
                return known
            vectors = query_vectors(embedder, "generic", GENERIC, lambda: _embed(embedder))
            with self._lock:
                self._by_embedder[embedder] = vectors
        return vectors


def _embed(embedder: Embedder) -> npt.NDArray[np.float32]:
    """:data:`GENERIC` embedded as queries, in calls of at most CACHE_MAX_BATCH texts, which
    MiniLM's query cache keeps: the probes (among these messages) are then found there by the
    calibration's searches."""
    texts = list(GENERIC)
    step = CACHE_MAX_BATCH
    chunks = [embed_queries(embedder, texts[i : i + step]) for i in range(0, len(texts), step)]
    return np.vstack(chunks).astype(np.float32)


_GENERIC_VECTORS = process.PerProcess(_GenericVectors)


def generic_vectors(embedder: Embedder) -> npt.NDArray[np.float32]:
    """The query vectors of :data:`GENERIC` under ``embedder``, one row per message (made once
    per process and embedder; for MiniLM from the bank on disk, built if missing or bad)."""
    return _GENERIC_VECTORS.get().of(embedder)


def genericness(embedder: Embedder, query: str) -> float:
    """The cosine of ``query`` to the nearest message of :data:`GENERIC`, clipped to [0, 1].

    Both are embedded as search queries; the query's vector comes from the embedder's query
    cache when it has one (the search just embedded it).
    """
    bank = generic_vectors(embedder)
    vector = np.asarray(embed_queries(embedder, [query])[0], dtype=np.float32)
    return min(1.0, max(0.0, float(np.max(bank @ vector))))


def relevant(
    store: MemoryStore, user_id: str, query: str, results: Sequence[tuple[Memory, float]]
) -> list[tuple[Memory, float]]:
    """What of ``results`` (``query``'s search for ``user_id``) to inject: :func:`select` with
    this process's background of the user and the query's genericness. The genericness is
    computed only when it can change the answer (the gate moves with it from ``gate(0)`` to
    ``gate(1)``)."""
    scores = [score for _, score in results if not math.isnan(score)]
    if not scores:
        return []
    background = calibration().background(store, user_id)
    best = max(scores)
    if best < background.gate(0.0):
        return []
    generic = 0.0 if best >= background.gate(1.0) else genericness(store.embedder, query)
    return select(results, background, generic)


def background_of(store: MemoryStore, user_id: str, count: int) -> Background:
    """Measure ``user_id``'s background now: one top-1 search per probe (the generic messages
    are embedded first, once per embedder, so the probes' vectors come from its cache)."""
    generic_vectors(store.embedder)
    scores = []
    for probe in PROBES:
        hits = store.search(user_id, probe, top_k=1)
        scores.append(float(hits[0][1]) if hits else 0.0)
    return Background(count, tuple(scores))


class Calibration:
    """Each user's :class:`Background` for the stores it is asked about. Thread-safe.

    Keyed by store (weakly: a closed and dropped store takes its backgrounds with it) and
    user id; at most ``max_users`` users per store, least recently used dropped first.
    """

    def __init__(self, max_users: int = MAX_USERS) -> None:
        self.max_users = max_users
        self._lock = threading.Lock()
        self._stores: weakref.WeakKeyDictionary[MemoryStore, OrderedDict[str, Background]] = (
            weakref.WeakKeyDictionary()
        )
        #: Backgrounds measured by this instance (for tests).
        self.measured = 0

    def background(self, store: MemoryStore, user_id: str) -> Background:
        """``user_id``'s background in ``store``, measured now if none is current.

        Costs one memory count per call; a measurement (:func:`background_of`) only when the
        count moved by ``REFRESH_FACTOR`` since the last one.
        """
        count = store.backend.count(user_id)
        with self._lock:
            users = self._stores.setdefault(store, OrderedDict())
            known = users.get(user_id)
            if known is not None and known.is_current(count):
                users.move_to_end(user_id)
                return known
        fresh = background_of(store, user_id, count)  # outside the lock: it searches
        with self._lock:
            users = self._stores.setdefault(store, OrderedDict())
            users[user_id] = fresh
            users.move_to_end(user_id)
            while len(users) > self.max_users:
                users.popitem(last=False)
            self.measured += 1
        return fresh

    def refresh(self, store: MemoryStore, user_id: str) -> Background | None:
        """After a write for ``user_id``: their background, measured again now if the one kept
        is no longer current (as :meth:`background`); None, measuring nothing, for a user this
        instance keeps no background of (never asked about in this process).

        Writers call it (:func:`after_write`) once a user's memories are stored, off the
        critical path: the user's next call then finds a current background (the same one,
        measured on the same memories, that it would otherwise measure itself)."""
        with self._lock:
            users = self._stores.get(store)
            if users is None or user_id not in users:
                return None
        return self.background(store, user_id)


def after_write(store: MemoryStore, user_id: str, min_score: float | None) -> None:
    """What a writer calls once it has stored memories for ``user_id`` (the inline writer,
    the background extraction worker): :meth:`Calibration.refresh` of this process's
    calibration when the rule decides (``min_score`` None). Never raises: a failure is logged
    and the user's next call measures the background itself."""
    if min_score is not None:
        return
    try:
        calibration().refresh(store, user_id)
    except Exception as exc:
        logger.warning(
            "headroom.memory: measuring the relevance background of user %r failed: %s",
            user_id,
            exc,
        )


#: One per process (a forked child starts with none: the parent's lock may be held).
_CALIBRATION = process.PerProcess(Calibration)


def calibration() -> Calibration:
    """This process's :class:`Calibration`, shared by every wrapper."""
    return _CALIBRATION.get()
