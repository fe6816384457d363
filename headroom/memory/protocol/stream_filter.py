"""Removes memory elements from a streamed answer as it arrives.

:class:`BlockStreamFilter` releases visible text as soon as it can no longer become part of a
memory tag. It holds back only a trailing fragment that could still start a tag (``<``,
``<mem``, ``</memory  `` ...) and the white space before it, or white space or a Markdown
fence opener that might precede a block (the block removes them); a fence opener right before
an element waits until it is clear whether a closing fence ends the answer. Inside an element
nothing is released and only a fragment that could still start the closing tag is kept, so
memory use stays bounded.

Contract: for every split of a text into chunks,
``"".join(f.feed(c) for c in chunks) + f.finish() == clean_text(text)``
(``headroom.memory.protocol.block``); ``raw_text`` is the text fed so far, for ``parse_answer``.
"""

from __future__ import annotations

import re

from ..errors import InvalidInputError, InvalidTypeError
from .block import (
    WHITESPACE,
    closes_fence,
    ends_with_fragment,
    fence_opener_start,
    strip_debris,
)

__all__ = ["BlockStreamFilter"]

_FLAGS = re.IGNORECASE | re.ASCII
# The start of a token: an element begins at "<memory"; a stray closing tag is complete.
_START = re.compile(r"<memory|</memory\s*>", _FLAGS)
_CLOSE = re.compile(r"</memory\s*>", _FLAGS)
_SELF_CLOSE = re.compile(r"\s*/>", _FLAGS)
_SELF_CLOSE_PREFIX = re.compile(r"\s*/?", _FLAGS)
_CLOSING_FENCE_PREFIX = re.compile(r"\s*(?:`{1,2}|```\s*)?", _FLAGS)
# Fragments (from a "<" to the end of the buffer) that more text could turn into a "</memory>".
_CLOSE_PREFIX = re.compile(r"<(?:/(?:m(?:e(?:m(?:o(?:r(?:y\s*)?)?)?)?)?)?)?", _FLAGS)


def _close_could_start(buffer: str) -> int:
    """Index of the last ``<`` when the text from there could grow into a closing tag."""
    at = buffer.rfind("<")
    return at if at >= 0 and _CLOSE_PREFIX.fullmatch(buffer, at) else -1


class BlockStreamFilter:
    """Incremental twin of ``clean_text``: feed chunks, get the visible text back.

    Not thread-safe (one stream, one consumer). After :meth:`finish` the filter is spent:
    feeding it again raises InvalidInputError.
    """

    def __init__(self) -> None:
        self._raw: list[str] = []
        self._buffer = ""  # text not decided yet
        self._in_element = False  # inside a "<memory" element, waiting for its end
        self._self_close_open = False  # could the element still be "<memory />"?
        self._after_token = False  # only white space since the last token
        self._emitted = False  # some visible text has been released
        self._released_here = False  # ... since the last token (or the start)
        self._fence: str | None = None  # a fence opener held before the last element
        self._finished = False

    @property
    def raw_text(self) -> str:
        """Everything fed so far, block included."""
        if len(self._raw) > 1:
            self._raw = ["".join(self._raw)]
        return self._raw[0] if self._raw else ""

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` has run."""
        return self._finished

    def feed(self, chunk: str | None) -> str:
        """Take the next chunk; return the visible text that can be released now.

        ``None`` counts as an empty chunk (streamed deltas without content). Raises
        InvalidTypeError for anything else that is not a str.
        """
        if self._finished:
            raise InvalidInputError("feed() after finish(): the stream has ended")
        if chunk is None:
            return ""
        if not isinstance(chunk, str):
            raise InvalidTypeError(f"chunk must be a str; got {type(chunk).__name__}")
        if not chunk:
            return ""
        self._raw.append(chunk)
        self._buffer += chunk
        return self._drain(final=False)

    def finish(self) -> str:
        """End of stream: return the rest of the visible text. A second call returns ""."""
        if self._finished:
            return ""
        self._finished = True
        return self._drain(final=True)

    # --- the state machine --------------------------------------------------------------

    def _drain(self, *, final: bool) -> str:
        out: list[str] = []
        while True:
            if self._in_element:
                if not self._scan_element(out, final):
                    break
            elif not self._scan_visible(out, final):
                break
        return "".join(out)

    def _scan_element(self, out: list[str], final: bool) -> bool:
        """Consume an element; True when it ended and scanning goes on after it."""
        buffer = self._buffer
        if self._self_close_open:
            closed = _SELF_CLOSE.match(buffer)
            if closed:
                self._end_token(buffer[closed.end() :])
                return True
            if _SELF_CLOSE_PREFIX.fullmatch(buffer) and not final:
                return False
            self._self_close_open = False
        close = _CLOSE.search(buffer)
        if close:
            self._end_token(buffer[close.end() :])
            return True
        if final:  # cut off: the rest of the text belongs to the element
            self._buffer = ""
            self._release_fence(out)
            return False
        at = _close_could_start(buffer)
        self._buffer = buffer[at:] if at >= 0 else ""
        return False

    def _scan_visible(self, out: list[str], final: bool) -> bool:
        """Release visible text; True when a token starts and scanning goes on after it."""
        buffer = self._buffer
        start = _START.search(buffer)
        if self._fence is not None:  # was the element before a fenced final block?
            if start is None and final and closes_fence(buffer):
                self._fence = None
                self._buffer = ""
                return False
            if start is None and not final and _CLOSING_FENCE_PREFIX.fullmatch(buffer):
                return False
            self._release_fence(out)
        if start:
            segment = self._lstripped(strip_debris(buffer[: start.start()]))
            if start.group(0).startswith("</"):
                self._emit(out, segment)
                self._end_token(buffer[start.end() :])
                return True
            opener = fence_opener_start(segment, line_start_at_0=not self._released_here)
            if opener >= 0:  # hold the fence: it goes if the element is the fenced last one
                kept = strip_debris(segment[:opener])
                self._emit(out, kept)
                self._fence = segment[len(kept) :]
            else:
                self._emit(out, segment)
            self._in_element = True
            self._self_close_open = True
            self._buffer = buffer[start.end() :]
            return True
        if final:
            if ends_with_fragment(buffer):  # a tag cut off at the end of the stream
                buffer = strip_debris(buffer)
            if not (self._after_token and not buffer.strip(WHITESPACE)):
                self._emit(out, self._lstripped(buffer))
            self._buffer = ""
            return False
        # Hold back trailing white space, tag fragments and a fence opener: a token may follow.
        skip = len(buffer) - len(self._lstripped(buffer))
        keep = len(strip_debris(buffer))
        if keep > skip:
            opener = fence_opener_start(
                buffer[skip:keep], partial=True, line_start_at_0=not self._released_here
            )
            if opener >= 0:
                keep = len(strip_debris(buffer[: skip + opener]))
        self._emit(out, self._lstripped(buffer[:keep]))
        self._buffer = buffer[keep:]
        return False

    def _end_token(self, rest: str) -> None:
        self._in_element = False
        self._self_close_open = False
        self._after_token = True
        self._released_here = False
        self._buffer = rest

    def _lstripped(self, text: str) -> str:
        """White space right after a token goes while nothing visible has been released."""
        if self._after_token and not self._emitted:
            return text.lstrip(WHITESPACE)
        return text

    def _emit(self, out: list[str], text: str) -> None:
        if text:
            out.append(text)
            self._emitted = True
            self._after_token = False
            self._released_here = True

    def _release_fence(self, out: list[str]) -> None:
        """The held fence opener was ordinary text after all: release it (it came before the
        element, so the state after the element stays as it is)."""
        if self._fence:
            out.append(self._fence)
            self._emitted = True
        self._fence = None
