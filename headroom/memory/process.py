"""Process-wide state, in one place: per-process values, fork hooks and exit hooks.

Every registry the library keeps for a process (shared stores, writers, workers, thread pools)
is built on what is here, so there is one ``os.register_at_fork`` and one ``atexit`` hook:

- :class:`PerProcess`: a value made on first use in each process; a forked child makes its
  own (the parent's threads and handles do not exist in it).
- :func:`after_fork_in_child`: run a function in a forked child, before any other code runs.
- :func:`at_exit`: run a function at interpreter exit (most recently registered first, as
  ``atexit`` does); an exception in one never stops the others.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

logger = logging.getLogger("headroom.memory")

_child_hooks: list[Callable[[], None]] = []
_exit_hooks: list[Callable[[], None]] = []


def after_fork_in_child(hook: Callable[[], None]) -> Callable[[], None]:
    """Register ``hook`` to run in every forked child (usable as a decorator)."""
    _child_hooks.append(hook)
    return hook


def at_exit(hook: Callable[[], None]) -> Callable[[], None]:
    """Register ``hook`` to run at interpreter exit (usable as a decorator)."""
    _exit_hooks.append(hook)
    return hook


def _run_child_hooks() -> None:
    for hook in _child_hooks:
        try:
            hook()
        except Exception:  # a child must start whatever one hook does
            logger.debug("an after-fork hook failed", exc_info=True)


def _run_exit_hooks() -> None:
    for hook in reversed(_exit_hooks):
        with contextlib.suppress(Exception):  # exit goes on whatever one hook does
            hook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_child_hooks)
atexit.register(_run_exit_hooks)


class PerProcess(Generic[T]):
    """A value made by ``factory`` on first use in each process. Thread-safe."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._pid = 0
        self._lock = threading.Lock()
        after_fork_in_child(self._forget)

    def get(self) -> T:
        """This process's value, made now if it has none."""
        value, pid = self._value, self._pid
        if value is not None and pid == os.getpid():
            return value
        with self._lock:
            if self._value is None or self._pid != os.getpid():
                self._value = self._factory()
                self._pid = os.getpid()
            return self._value

    def _forget(self) -> None:
        # In the child: the lock may have been held by a parent thread; the value is the
        # parent's (its threads are gone). Both are replaced, never used.
        self._lock = threading.Lock()
        self._value = None
