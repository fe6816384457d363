"""Errors of the PostgreSQL backend (both are StoreError, so ``except StoreError`` catches them).

This module imports no database driver.
"""

from __future__ import annotations

from ...errors import StoreError


class PostgresSetupError(StoreError):
    """The database is not ready for the store and this role cannot make it so (e.g. the
    pgvector extension is missing and the role may not install it); the message says exactly
    what the operator must run."""


class PostgresUnavailableError(StoreError):
    """The server could not be reached, or the connection broke during the call.

    A read can simply be retried. For a write the outcome is unknown only when the connection
    broke while the commit was in flight; otherwise nothing of the call was applied.
    """


__all__ = ["PostgresSetupError", "PostgresUnavailableError"]
