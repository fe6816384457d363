"""RollingWindowTransform: keep a chat history within a token budget by dropping its oldest turns.

The rules (docs/transforms.md has them with examples):

1. Always kept: every system and developer message (where it stands), the last user message,
   and the final atom of the conversation (the trailing assistant message or tool exchange after
   the last user message). With ``keep_last_turns=N`` (default 1) the last N turns are kept
   whole as well.
2. Everything else is dropped in whole turns, oldest first, until the list fits ``max_tokens``
   (counted with :meth:`TokenCounter.count_messages`, reply priming included). With
   ``keep_last_turns=0`` the atoms of the last turn between its user message and its final atom
   are dropped next, oldest first (for long agent loops).
3. An assistant message with tool calls and its results are one atom: kept or dropped
   together, never split. Because whole turns go, the output never starts (after system
   messages) with an assistant or tool message unless the input did, and never puts two user
   messages next to each other that were not next to each other in the input.
4. The output is a new list of new dicts (shallow copies of the kept messages, in input order:
   a subsequence); the input is never mutated.
5. Over budget: when what is always kept does not fit, everything else is dropped and the kept
   messages are returned anyway, flagged in the report (``over_budget``, and ``oversized`` for
   messages that alone exceed the budget), with a logged warning. No exception is raised for
   size.
6. Invalid input raises before anything is dropped (see
   :mod:`headroom.transforms.conversation`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from headroom.memory.errors import InvalidInputError
from headroom.transforms.conversation import Atom, Conversation, parse_conversation
from headroom.transforms.tokens import (
    REPLY_PRIMING,
    TokenCounter,
    TokenCounterLike,
    resolve_counter,
)

__all__ = ["RollingWindowTransform", "WindowReport"]

_log = logging.getLogger("headroom.transforms")


@dataclass(frozen=True)
class WindowReport:
    """What one :meth:`RollingWindowTransform.apply` did.

    Indices refer to the input list. ``dropped_messages`` are shallow copies of the dropped
    messages in input order (what fell out of the window, e.g. for memory to take over).
    ``tokens_before`` / ``tokens_after`` are the counts of the input and of the output.
    ``over_budget`` is True when the output still exceeds ``max_tokens``; ``oversized`` lists
    kept messages whose atom alone (with reply priming) exceeds it.
    """

    kept: tuple[int, ...]
    dropped: tuple[int, ...]
    dropped_messages: tuple[dict[str, Any], ...]
    dropped_turns: int
    tokens_before: int
    tokens_after: int
    max_tokens: int | None
    over_budget: bool
    oversized: tuple[int, ...]
    counter: str


def _positive(name: str, value: object, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an int >= {minimum} or None, got {value!r}")
    return value


class RollingWindowTransform:
    """Drops the oldest turns of a chat history so that it fits ``max_tokens``.

    ``max_tokens=None`` puts no limit on size (the transform then only validates and copies).
    ``keep_last_turns`` (default 1) is how many of the most recent turns are never dropped;
    0 lets even the last turn lose its middle tool exchanges. ``token_counter`` is None (tiktoken
    when available offline, else the estimate), a
    :class:`~headroom.transforms.tokens.TokenCounter`, or a ``text -> int`` callable (wrap a
    ``message -> int`` one with ``TokenCounter.from_message_fn``).

    Stateless apart from :attr:`last_report`, which each call overwrites; when one instance is
    shared between threads use :meth:`apply_with_report`.
    """

    def __init__(
        self,
        max_tokens: int | None = None,
        keep_last_turns: int = 1,
        token_counter: TokenCounterLike = None,
    ) -> None:
        self.max_tokens = _positive("max_tokens", max_tokens, 1)
        keep = _positive("keep_last_turns", keep_last_turns, 0)
        if keep is None:
            raise InvalidInputError("keep_last_turns must be an int >= 0, got None")
        self.keep_last_turns = keep
        self.counter: TokenCounter = resolve_counter(token_counter)
        self.last_report: WindowReport | None = None

    def __repr__(self) -> str:
        return (
            f"RollingWindowTransform(max_tokens={self.max_tokens}, "
            f"keep_last_turns={self.keep_last_turns}, token_counter={self.counter.name!r})"
        )

    def apply(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The windowed copy of ``messages`` (see the module docstring for the rules)."""
        return self.apply_with_report(messages)[0]

    def apply_with_report(
        self, messages: Sequence[Mapping[str, Any]], *, warn: bool = True
    ) -> tuple[list[dict[str, Any]], WindowReport]:
        """Like :meth:`apply`, and also returns the :class:`WindowReport` of this call.

        ``warn=False`` leaves out the over-budget warning (rule 5), for a caller that tries a
        budget and acts on ``report.over_budget`` itself; the report is the same.
        """
        conversation = parse_conversation(messages)
        costs = [self.counter.count_message(message) for message in messages]
        dropped_flags = [False] * len(costs)
        total = REPLY_PRIMING + sum(costs) if costs else 0
        tokens_before = total
        dropped_turns = 0
        if self.max_tokens is not None:
            for unit, whole_turn in self._droppable(conversation):
                if total <= self.max_tokens:
                    break
                for atom in unit:
                    for index in range(atom.start, atom.stop):
                        dropped_flags[index] = True
                        total -= costs[index]
                dropped_turns += whole_turn
        kept = tuple(i for i, flag in enumerate(dropped_flags) if not flag)
        if not kept:
            total = 0
        dropped = tuple(i for i, flag in enumerate(dropped_flags) if flag)
        over_budget = self.max_tokens is not None and total > self.max_tokens
        oversized = self._oversized(conversation, costs, dropped_flags) if over_budget else ()
        report = WindowReport(
            kept=kept,
            dropped=dropped,
            dropped_messages=tuple(dict(messages[i]) for i in dropped),
            dropped_turns=dropped_turns,
            tokens_before=tokens_before,
            tokens_after=total,
            max_tokens=self.max_tokens,
            over_budget=over_budget,
            oversized=oversized,
            counter=self.counter.name,
        )
        if over_budget and warn:
            _log.warning(
                "rolling window: %d tokens kept exceed max_tokens=%d (messages that must stay "
                "are too large; oversized: %s)",
                total,
                self.max_tokens,
                list(oversized),
            )
        self.last_report = report
        return [dict(messages[i]) for i in kept], report

    def _droppable(self, conversation: Conversation) -> list[tuple[tuple[Atom, ...], bool]]:
        """Units that may be dropped, oldest first, each with whether it is a whole turn."""
        turns = conversation.turns
        protected = min(max(self.keep_last_turns, 1), len(turns))
        units: list[tuple[tuple[Atom, ...], bool]] = [
            (turn.atoms, True) for turn in turns[: len(turns) - protected]
        ]
        if self.keep_last_turns == 0 and turns:
            last = turns[-1].atoms
            first = 0 if last[0].kind != "user" else 1
            units.extend(((atom,), False) for atom in last[first:-1])
        return units

    def _oversized(
        self, conversation: Conversation, costs: list[int], dropped: list[bool]
    ) -> tuple[int, ...]:
        """Kept messages whose atom alone, with reply priming, exceeds ``max_tokens``."""
        limit = self.max_tokens if self.max_tokens is not None else float("inf")
        atoms = list(conversation.pinned) + [a for t in conversation.turns for a in t.atoms]
        found: list[int] = []
        for atom in atoms:
            if dropped[atom.start]:
                continue
            if REPLY_PRIMING + sum(costs[atom.start : atom.stop]) > limit:
                found.extend(range(atom.start, atom.stop))
        return tuple(sorted(found))
