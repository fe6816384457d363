"""The relevance decision: which of a search's results are worth injecting, per user.

A fixed floor on the search score cannot work across store sizes: the fused score of a
message that is about nothing the user said ("hi", "make it shorter") grows with the number
and kind of memories held (more memories to resemble, centring, the lexical and session
bonuses). So the floor is measured per user: the *background* is what the fixed generic
messages of :data:`PROBES` score against this user's memories, through the same search the
wrapper injects with, and a message injects only what clears that background.

The rule (:func:`select`), over the ``(memory, score)`` results of the message's search:

- the message injects nothing unless its best score reaches :attr:`Background.gate`, the
  ``GATE_QUANTILE`` quantile of the probes' best scores plus ``GATE_MARGIN``;
- when it does, each result scoring at least :attr:`Background.floor` (the
  ``FLOOR_QUANTILE`` quantile plus ``FLOOR_MARGIN``) is kept, best first.

Quantiles and margins are differences of scores of one user under one embedder, so the rule
holds for any store size and embedding mode; the figures that chose them (and every rule
measured against them) are in bench/README.md, section "Relevance decision"
(``python -m bench injection``).

:class:`Calibration` keeps each user's background per store and measures it again when the
user's memory count has moved by ``REFRESH_FACTOR`` since (a few searches, never on every
call: the probes' vectors come from the embedder's query cache after the first time).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import process
from ..types import Memory

if TYPE_CHECKING:
    from ..store.store import MemoryStore

__all__ = [
    "PROBES",
    "Background",
    "Calibration",
    "background_of",
    "calibration",
    "select",
]

#: Messages about nothing a user could have told us: greetings, thanks, edits of the previous
#: answer, arithmetic, creative and general requests. Their best scores against a user's
#: memories are that user's background. (The injection suite's generic messages are other
#: texts, so the rule is judged on messages it was not calibrated with.)
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
#: scores plus ``GATE_MARGIN``.
GATE_QUANTILE = 0.9
GATE_MARGIN = 0.25
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

    @property
    def gate(self) -> float:
        """The best score a message needs to inject anything."""
        return quantile(self.probe_scores, GATE_QUANTILE) + GATE_MARGIN

    @property
    def floor(self) -> float:
        """The score each injected memory needs (never above the gate)."""
        return min(quantile(self.probe_scores, FLOOR_QUANTILE) + FLOOR_MARGIN, self.gate)

    def is_current(self, count: int) -> bool:
        """Whether a user now holding ``count`` memories may keep this background."""
        if count == self.count:
            return True
        if self.count == 0 or count == 0:
            return False
        return self.count / REFRESH_FACTOR < count < self.count * REFRESH_FACTOR


def select(
    results: Sequence[tuple[Memory, float]], background: Background
) -> list[tuple[Memory, float]]:
    """The results worth injecting under ``background`` (the rule of the module docstring).

    Pure; keeps the order of ``results``. Empty when no score reaches the gate.
    """
    scores = [score for _, score in results if not math.isnan(score)]
    if not scores or max(scores) < background.gate:
        return []
    floor = background.floor
    return [(memory, score) for memory, score in results if score >= floor]


def background_of(store: MemoryStore, user_id: str, count: int) -> Background:
    """Measure ``user_id``'s background now: one top-1 search per probe."""
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
        #: Backgrounds measured by this instance (a figure for tests and the bench suite).
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

    def forget(self, store: MemoryStore, user_id: str | None = None) -> None:
        """Drop the backgrounds of ``user_id`` (all users when None) in ``store``."""
        with self._lock:
            users = self._stores.get(store)
            if users is None:
                return
            if user_id is None:
                users.clear()
            else:
                users.pop(user_id, None)


#: One per process (a forked child starts with none: the parent's lock may be held).
_CALIBRATION = process.PerProcess(Calibration)


def calibration() -> Calibration:
    """This process's :class:`Calibration`, shared by every wrapper."""
    return _CALIBRATION.get()
