"""The PostgreSQL + pgvector backend (``pip install 'headroom-memory[postgres]'``).

``PostgresBackend(url)`` implements :class:`headroom.memory.store.backend.Backend` over one
database; docs/postgres.md describes its schema, isolation, pooling and what a hard delete
can promise there.
"""

from ...errors import PostgresSetupError, PostgresUnavailableError
from .backend import PgUserRanking, PostgresBackend
from .schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "PgUserRanking",
    "PostgresBackend",
    "PostgresSetupError",
    "PostgresUnavailableError",
]
