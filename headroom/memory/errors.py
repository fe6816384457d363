"""Typed errors raised by headroom.memory.

Every error a caller can see derives from :class:`HeadroomMemoryError`. Errors caused by bad
input also derive from :class:`ValueError` (or :class:`TypeError` / :class:`KeyError` where that
is the natural kind), so ``except ValueError`` keeps working for callers who do not know our
hierarchy. The compiled core raises these same classes (the binding imports this module).

Rule: an operation that raises leaves the store as it was before the call. Nothing is
half-written.
"""

from __future__ import annotations


class HeadroomMemoryError(Exception):
    """Base class of every error raised by headroom.memory."""


# --- bad input -------------------------------------------------------------------------------


class InvalidInputError(HeadroomMemoryError, ValueError):
    """An argument is malformed; the message names the argument and what was wrong."""


class InvalidTextError(InvalidInputError):
    """A memory text is empty, not a string, too long, or not encodable as UTF-8."""


class InvalidUserIdError(InvalidInputError):
    """A user id is empty, too long, not a string, or contains control characters."""


class InvalidCategoryError(InvalidInputError):
    """A category is not one of ``preference``, ``fact``, ``context``."""


class InvalidMetadataError(InvalidInputError):
    """Metadata is not a JSON-serialisable mapping with string keys, or is too large."""


class InvalidVectorError(InvalidInputError):
    """A vector has the wrong shape, dimension or dtype, or holds NaN or infinite values."""


class InvalidTimeError(InvalidInputError):
    """A time is not a datetime or finite epoch seconds (or an ISO 8601 string where one is
    read from a file), or lies outside the range the store can hold."""


class InvalidSourceError(InvalidInputError):
    """A source is not one of ``inline``, ``manual``, ``background``, ``import``."""


class InvalidTypeError(HeadroomMemoryError, TypeError):
    """An argument has the wrong Python type (e.g. a non-string passed to an embedder)."""


class MemoryNotFoundError(HeadroomMemoryError, KeyError):
    """No live memory with this id exists for this user."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else "memory not found"


# --- the store -------------------------------------------------------------------------------


class StoreError(HeadroomMemoryError):
    """A problem with the on-disk store."""


class StoreNotFoundError(StoreError):
    """There is no store at the path, and the caller asked not to create one."""


class PostgresSetupError(StoreError):
    """The database is not ready for the store and this role cannot make it so (e.g. the
    pgvector extension is missing and the role may not install it); the message says exactly
    what the operator must run."""


class PostgresUnavailableError(StoreError):
    """The PostgreSQL server could not be reached, or the connection broke during the call.

    A read can simply be retried. For a write the outcome is unknown only when the connection
    broke while the commit was in flight; otherwise nothing of the call was applied.
    """


class StoreFailedError(StoreError):
    """A write or fsync failed earlier; the store refuses further writes until reopened.

    What was acknowledged before the failure is intact; the failed write is not visible.
    """


class StoreClosedError(StoreError):
    """The store was closed (or belongs to the parent of a forked process)."""


class StoreVersionError(StoreError):
    """The store was written by a newer format version than this library reads."""


class StoreCorruptionError(StoreError):
    """A file of the store is damaged beyond what recovery repairs (e.g. a bad header)."""


class EmbeddingModelMismatchError(StoreError):
    """The store was written with another embedding model (id or dimension).

    Open it with the same model, or migrate it with ``reembed``.
    """


class JobLostError(HeadroomMemoryError):
    """The claim on a background job is no longer held: its lease ran out and another worker
    claimed it, or the job is gone (completed, or purged with its user). Nothing of the
    completion was applied."""


# --- embedders -------------------------------------------------------------------------------


class EmbedderError(HeadroomMemoryError):
    """Embedding failed."""


class ModelNotFoundError(EmbedderError):
    """The local embedding model could not be found; the message says exactly what to run."""


__all__ = [
    "EmbedderError",
    "EmbeddingModelMismatchError",
    "HeadroomMemoryError",
    "InvalidCategoryError",
    "InvalidInputError",
    "InvalidMetadataError",
    "InvalidSourceError",
    "InvalidTextError",
    "InvalidTimeError",
    "InvalidTypeError",
    "InvalidUserIdError",
    "InvalidVectorError",
    "JobLostError",
    "MemoryNotFoundError",
    "ModelNotFoundError",
    "PostgresSetupError",
    "PostgresUnavailableError",
    "StoreClosedError",
    "StoreCorruptionError",
    "StoreError",
    "StoreFailedError",
    "StoreNotFoundError",
    "StoreVersionError",
]
