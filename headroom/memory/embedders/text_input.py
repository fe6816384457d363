"""Checks and cleans the texts given to an embedder (shared by every embedder)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InvalidTypeError


def check_texts(texts: object) -> list[str]:
    """Return ``texts`` as a list of str; raise InvalidTypeError for anything else.

    A bare ``str`` is refused (it is a sequence of characters, almost always a mistake for
    ``[text]``), as is any element that is not a ``str`` (``bytes`` included).
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise InvalidTypeError(
            f"texts must be a sequence of str (e.g. a list); got {type(texts).__name__}"
        )
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InvalidTypeError(f"texts[{i}] must be a str; got {type(text).__name__}")
    return out


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD; other text is unchanged.

    Python strings may hold lone surrogates (e.g. from ``surrogateescape`` decoding) that are
    not valid Unicode and cannot be encoded as UTF-8. A surrogate *pair* written as two code
    points is joined into the character it encodes.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
