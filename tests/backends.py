"""The storage backends the contract suite runs on, and how each makes a fresh, empty store.

A backend takes part in the whole contract suite (tests/test_backend_contract.py and the
stateful property test) by adding a :class:`BackendKind` to :data:`KINDS`: a name and a way to
make the location (a directory path or a URL) of a new, empty store.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_counter = itertools.count()


@dataclass(frozen=True)
class BackendKind:
    """A backend of the contract suite.

    ``new_location(scratch)`` names a new, empty store; ``scratch`` is a directory the caller
    owns and removes afterwards (a backend that keeps no files may ignore it).
    """

    name: str
    new_location: Callable[[Path], str]


def _new_local_location(scratch: Path) -> str:
    return str(scratch / f"db{next(_counter)}")


def _new_postgres_location(scratch: Path) -> str:
    # A new database on the session's PostgreSQL server (tests/pg_fixture.py: started on first
    # use, stopped at exit), owned by a plain role, as that role's URL.
    from tests import pg_fixture

    return pg_fixture.server().new_store_database(prefix="contract")


KINDS: list[BackendKind] = [
    BackendKind("local", _new_local_location),
    BackendKind("postgres", _new_postgres_location),
]
