"""Loader of LoCoMo (upstream schema) into typed records, and the memory units we ingest.

Contracts:
- :func:`load` reads ``locomo_dev.json`` from ``$HEADROOM_SHARED_DIR/data/locomo`` (default: the
  ``shared`` folder beside the checkout) and never writes anything.
- Dialogue ids are normalised to ``D<session>:<turn>``: known malformed evidence (``"D8:6; D9:17"``,
  ``"D:11:26"``, ``"D26:14, D26:34"``) is split and repaired; a string with no turn number is
  dropped. Questions left without evidence are kept (``evidence == ()``) and skipped by scoring.
- Session dates (``"1:56 pm on 8 May, 2023"``) become aware UTC datetimes.
- A memory unit is the text we store plus the dia_ids it stands for, its session date and speaker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from bench.common import shared_dir

UnitKind = Literal["facts", "turns", "summaries"]
UNIT_KINDS: tuple[UnitKind, ...] = ("facts", "turns", "summaries")

#: Conversations we may tune on, and the held-out ones we only report on.
TUNE_SPLIT: tuple[str, ...] = ("conv-26", "conv-30", "conv-41", "conv-42")
REPORT_SPLIT: tuple[str, ...] = ("conv-43", "conv-44", "conv-47")
SPLITS: dict[str, tuple[str, ...]] = {
    "tune": TUNE_SPLIT,
    "report": REPORT_SPLIT,
    "all": TUNE_SPLIT + REPORT_SPLIT,
}

#: LoCoMo's own category codes.
CATEGORY_NAMES: dict[int, str] = {
    1: "multi-hop",
    2: "temporal",
    3: "open-domain",
    4: "single-hop",
    5: "adversarial",
}
HEADLINE_CATEGORIES: frozenset[int] = frozenset({1, 2, 3, 4})

_DIA_RE = re.compile(r"D:?(\d+):(\d+)")
_DATE_FORMAT = "%I:%M %p on %d %B, %Y"


def locomo_path() -> Path:
    """Path of the LoCoMo JSON file in the shared data folder."""
    return shared_dir() / "data" / "locomo" / "locomo_dev.json"


def parse_dia_ids(raw: object) -> tuple[str, ...]:
    """Normalised dia_ids of one evidence field (a string or a list of strings), in order.

    >>> parse_dia_ids(["D8:6; D9:17", "D:11:26", "D"])
    ('D8:6', 'D9:17', 'D11:26')
    """
    items = raw if isinstance(raw, list) else [raw]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            continue
        for session, turn in _DIA_RE.findall(item):
            dia = f"D{int(session)}:{int(turn)}"
            if dia not in out:
                out.append(dia)
    return tuple(out)


def parse_session_date(text: str) -> datetime:
    """``"1:56 pm on 8 May, 2023"`` as an aware UTC datetime. Raises ValueError otherwise."""
    return datetime.strptime(text.strip(), _DATE_FORMAT).replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Turn:
    """One dialogue turn; ``caption`` is the BLIP caption of a shared photo, if any."""

    dia_id: str
    speaker: str
    text: str
    caption: str | None
    session: int


@dataclass(frozen=True)
class Session:
    """One dated session of a conversation."""

    index: int
    date: datetime
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Question:
    """One QA item. ``evidence`` holds normalised dia_ids (may be empty)."""

    question: str
    answer: str
    evidence: tuple[str, ...]
    category: int


@dataclass(frozen=True)
class Unit:
    """One memory as we ingest it: text, the dia_ids it covers, session date and speaker."""

    text: str
    dia_ids: tuple[str, ...]
    created_at: datetime
    speaker: str | None
    session: int


@dataclass(frozen=True)
class Conversation:
    """A LoCoMo sample: two speakers, dated sessions, extracted facts, summaries and QA."""

    sample_id: str
    speakers: tuple[str, str]
    sessions: tuple[Session, ...]
    facts: tuple[Unit, ...]
    summaries: tuple[Unit, ...]
    questions: tuple[Question, ...]

    def units(self, kind: UnitKind) -> tuple[Unit, ...]:
        """The memory units of one kind: observation facts, raw turns or session summaries."""
        if kind == "facts":
            return self.facts
        if kind == "summaries":
            return self.summaries
        if kind == "turns":
            return tuple(
                Unit(turn_text(t), (t.dia_id,), s.date, t.speaker, s.index)
                for s in self.sessions
                for t in s.turns
            )
        raise ValueError(f"unknown unit kind {kind!r}; expected one of {UNIT_KINDS}")

    def full_text(self) -> str:
        """The whole conversation as one text (one turn a line), for token-cost comparisons."""
        return "\n".join(turn_text(t) for s in self.sessions for t in s.turns)


def turn_text(turn: Turn) -> str:
    """A turn as stored: ``"Speaker: text"`` plus a shared photo's caption (as LoCoMo's RAG)."""
    text = f"{turn.speaker}: {turn.text}"
    if turn.caption:
        text += f" [shares {turn.caption}]"
    return text


def _session_numbers(conv: dict[str, Any]) -> list[int]:
    nums = {int(m.group(1)) for k in conv if (m := re.fullmatch(r"session_(\d+)", k))}
    return sorted(n for n in nums if conv.get(f"session_{n}"))


def _parse_sample(sample: dict[str, Any]) -> Conversation:
    conv = sample["conversation"]
    sessions: list[Session] = []
    dates: dict[int, datetime] = {}
    for n in _session_numbers(conv):
        date = parse_session_date(conv[f"session_{n}_date_time"])
        dates[n] = date
        turns = tuple(
            Turn(t["dia_id"], t["speaker"], t["text"], t.get("blip_caption"), n)
            for t in conv[f"session_{n}"]
        )
        sessions.append(Session(n, date, turns))
    facts: list[Unit] = []
    for key, per_speaker in sample.get("observation", {}).items():
        n = int(re.findall(r"\d+", key)[0])
        for speaker, items in per_speaker.items():
            for text, raw_ids in items:
                facts.append(Unit(text, parse_dia_ids(raw_ids), dates[n], speaker, n))
    summaries: list[Unit] = []
    by_session = {s.index: s for s in sessions}
    for key, text in sample.get("session_summary", {}).items():
        n = int(re.findall(r"\d+", key)[0])
        if n in by_session:
            ids = tuple(t.dia_id for t in by_session[n].turns)
            summaries.append(Unit(text, ids, dates[n], None, n))
    questions = tuple(
        Question(
            q["question"],
            str(q.get("answer", q.get("adversarial_answer", ""))),
            parse_dia_ids(q.get("evidence", [])),
            int(q["category"]),
        )
        for q in sample["qa"]
    )
    return Conversation(
        sample["sample_id"],
        (conv["speaker_a"], conv["speaker_b"]),
        tuple(sessions),
        tuple(facts),
        tuple(sorted(summaries, key=lambda u: u.session)),
        questions,
    )


def load(path: Path | None = None, ids: Sequence[str] | None = None) -> list[Conversation]:
    """Conversations from the LoCoMo file, all of them or those named in ``ids`` (in that order).

    Raises FileNotFoundError with the expected location when the data is missing, and KeyError
    for an id that is not in the file.
    """
    file = path or locomo_path()
    if not file.is_file():
        raise FileNotFoundError(
            f"LoCoMo not found at {file}; set HEADROOM_SHARED_DIR to the shared folder"
        )
    samples = json.loads(file.read_text(encoding="utf-8"))
    convs = {c.sample_id: c for c in map(_parse_sample, samples)}
    if ids is None:
        return list(convs.values())
    missing = [i for i in ids if i not in convs]
    if missing:
        raise KeyError(f"conversations not in {file.name}: {missing}")
    return [convs[i] for i in ids]
