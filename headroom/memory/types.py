"""The values the public API hands out and takes in: Memory, categories, sources, validation.

These are plain data. Nothing here touches a file or a model.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from .errors import (
    InvalidCategoryError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidSourceError,
    InvalidTextError,
    InvalidTimeError,
    InvalidTypeError,
    InvalidUserIdError,
)

Category = Literal["preference", "fact", "context"]
Source = Literal["inline", "manual", "background", "import"]

#: Category names in the order of their on-disk codes (code = index + 1).
CATEGORIES: tuple[Category, ...] = ("preference", "fact", "context")
#: Source names in the order of their on-disk codes (code = index + 1).
SOURCES: tuple[Source, ...] = ("inline", "manual", "background", "import")

#: Longest memory text accepted, in UTF-8 bytes. Memories are short facts, not documents.
MAX_TEXT_BYTES = 16 * 1024
#: Longest user id accepted, in UTF-8 bytes.
MAX_USER_ID_BYTES = 256
#: Largest metadata object accepted, as compact JSON in UTF-8 bytes.
MAX_METADATA_BYTES = 64 * 1024
#: Times are stored as signed 64-bit microseconds since the Unix epoch.
_MAX_TIMESTAMP_US = 2**63 - 1


def category_code(category: str) -> int:
    """On-disk code of a category name (1-based). Raises InvalidCategoryError."""
    if not isinstance(category, str) or category.strip().lower() not in CATEGORIES:
        raise InvalidCategoryError(
            f"category must be one of {', '.join(CATEGORIES)}; got {category!r}"
        )
    return CATEGORIES.index(category.strip().lower()) + 1  # type: ignore[arg-type,unused-ignore]


def category_name(code: int) -> Category:
    """Category name of an on-disk code."""
    return CATEGORIES[code - 1]


def source_code(source: str) -> int:
    """On-disk code of a source name (1-based). Raises InvalidSourceError."""
    if not isinstance(source, str) or source not in SOURCES:
        raise InvalidSourceError(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
    return SOURCES.index(source) + 1


def source_name(code: int) -> Source:
    """Source name of an on-disk code."""
    return SOURCES[code - 1]


def validate_user_id(user_id: object) -> str:
    """Return ``user_id`` if it is a valid user id, else raise InvalidUserIdError.

    A user id is a non-empty string of at most 256 UTF-8 bytes without control characters.
    User ids never become file names: index files are named by a hash of the id.
    """
    if not isinstance(user_id, str):
        raise InvalidUserIdError(f"user_id must be a str; got {type(user_id).__name__}")
    if not user_id or not user_id.strip():
        raise InvalidUserIdError("user_id must not be empty")
    try:
        size = len(user_id.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidUserIdError(f"user_id is not valid UTF-8 text: {exc.reason}") from None
    if size > MAX_USER_ID_BYTES:
        raise InvalidUserIdError(f"user_id is {size} bytes; the limit is {MAX_USER_ID_BYTES}")
    if any(unicodedata.category(ch) == "Cc" for ch in user_id):
        raise InvalidUserIdError("user_id must not contain control characters")
    return user_id


def validate_text(text: object) -> str:
    """Return ``text`` stripped of surrounding white space, or raise InvalidTextError."""
    if not isinstance(text, str):
        raise InvalidTextError(f"memory text must be a str; got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise InvalidTextError("memory text must not be empty")
    try:
        size = len(stripped.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidTextError(f"memory text is not valid UTF-8 text: {exc.reason}") from None
    if size > MAX_TEXT_BYTES:
        raise InvalidTextError(f"memory text is {size} bytes; the limit is {MAX_TEXT_BYTES}")
    if "\x00" in stripped:  # no backend may hold what another cannot (PostgreSQL text cannot)
        raise InvalidTextError("memory text must not contain NUL characters")
    return stripped


def validate_metadata(metadata: object) -> dict[str, Any]:
    """Return a JSON-safe copy of ``metadata`` (None means empty) or raise InvalidMetadataError."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(f"metadata must be a mapping; got {type(metadata).__name__}")
    if not all(isinstance(k, str) for k in metadata):
        raise InvalidMetadataError("metadata keys must be strings")
    try:
        encoded = json.dumps(dict(metadata), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMetadataError(f"metadata must be JSON-serialisable: {exc}") from None
    if len(encoded.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise InvalidMetadataError(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMetadataError(f"metadata is not valid UTF-8 text: {exc.reason}") from None
    loaded: dict[str, Any] = json.loads(encoded)
    if _holds_nul(loaded):
        raise InvalidMetadataError("metadata must not contain NUL characters")
    return loaded


def _holds_nul(value: object) -> bool:
    """True when a NUL character is in any string (key or value) of a JSON value."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def to_timestamp_us(value: datetime | float | int | None) -> int | None:
    """Microseconds since the Unix epoch for a datetime (naive means UTC) or epoch seconds.

    Raises InvalidTimeError for anything else (a string, a bool, NaN, infinity) and for a time
    the store cannot hold (beyond a signed 64-bit count of microseconds).
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return round(value.timestamp() * 1_000_000)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidTimeError(f"a time must be a datetime or epoch seconds; got {value!r}")
    us = round(float(value) * 1_000_000)
    if not -_MAX_TIMESTAMP_US <= us <= _MAX_TIMESTAMP_US:
        raise InvalidTimeError(f"a time of {value!r} epoch seconds is out of range")
    return us


def from_timestamp_us(us: int) -> datetime:
    """Aware UTC datetime of microseconds since the Unix epoch."""
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)


@dataclass(frozen=True)
class Memory:
    """One remembered fact about a user, as the store holds it now.

    ``created_at`` is when the fact was first stored (or the time given to ``add``);
    ``updated_at`` is when this version was written. Both are aware UTC datetimes.
    ``metadata`` is a JSON-safe dict; treat it as read-only.
    """

    id: str
    text: str
    category: Category
    created_at: datetime
    updated_at: datetime
    source: Source = "manual"
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    user_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (times as ISO 8601 strings)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "text": self.text,
            "category": self.category,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "source": self.source,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class MemoryVersion:
    """One entry of a memory's history: a version of its text, or its deletion."""

    memory_id: str
    text: str
    category: Category
    at: datetime
    operation: Literal["add", "update", "delete", "clear"]
    source: Source = "manual"
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)


def validate_category(category: object) -> Category:
    """The category name ``category`` stands for (case and surrounding space ignored), or
    InvalidCategoryError. The one category rule of every layer."""
    return CATEGORIES[category_code(category) - 1]  # type: ignore[arg-type]


@dataclass(frozen=True)
class NewMemory:
    """A memory to add: a non-empty text, a category, optional metadata and creation time.

    Raises InvalidTextError for a text that is not a non-empty string of at most
    :data:`MAX_TEXT_BYTES` and InvalidCategoryError for an unknown category; the category is
    normalised to its name. The text is kept as given (the store strips it). The store
    validates ``metadata`` and ``created_at`` when it writes.
    """

    text: str
    category: Category = "fact"
    metadata: dict[str, Any] | None = field(default=None, compare=True, hash=False)
    created_at: datetime | float | None = None

    def __post_init__(self) -> None:
        validate_text(self.text)
        object.__setattr__(self, "category", validate_category(self.category))


@dataclass(frozen=True)
class MemoryUpdate:
    """A new version of an existing memory, named by its id (a short id such as ``m1`` in a
    parsed block; the pipeline maps it to the real id). ``category=None`` keeps the category.
    """

    id: str
    text: str
    category: Category | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InvalidTypeError(f"MemoryUpdate.id must be a non-empty str; got {self.id!r}")
        validate_text(self.text)
        if self.category is not None:
            object.__setattr__(self, "category", validate_category(self.category))


def validate_source(source: object) -> Source:
    """``source`` if it names a source, else InvalidSourceError."""
    return SOURCES[source_code(source) - 1]  # type: ignore[arg-type]


def validate_memory_id(memory_id: object) -> str:
    """``memory_id`` if it can name a memory on every backend (a non-empty str of at most
    :data:`MAX_USER_ID_BYTES` UTF-8 bytes without control characters), else InvalidInputError."""
    if not isinstance(memory_id, str) or not memory_id.strip():
        raise InvalidInputError(f"a memory id must be a non-empty str; got {memory_id!r}")
    try:
        size = len(memory_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInputError("a memory id must be valid UTF-8 text") from None
    if size > MAX_USER_ID_BYTES or any(unicodedata.category(c) == "Cc" for c in memory_id):
        raise InvalidInputError(
            f"a memory id must be at most {MAX_USER_ID_BYTES} bytes without control characters"
        )
    return memory_id
