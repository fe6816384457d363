"""A single background thread that runs store writes after the response has returned.

The inline pipeline's critical path is inject + call + parse; embedding the new memories and
the durable write run here, in submission order. :meth:`Writer.flush` waits for everything
submitted so far; every writer is flushed at interpreter exit (``atexit``). A hard crash in
that window may lose the newest inline memories; ``with_memory``'s durable queue is the mode
that loses nothing. Tasks may carry a key (the user id): :meth:`Writer.wait_key` waits for that
user's writes only, so a user's next injection sees their previous answer's memories and does
not wait for other users' writes while it has none queued. (One thread, in submission order: a
user's queued write still runs after the writes queued before it, whoever they are for.)

A failing task is logged (logger ``headroom.memory``) and never stops the writer. After a
``fork`` the child starts its own thread on first use.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import Counter, deque
from collections.abc import Callable

from .. import process

logger = logging.getLogger("headroom.memory")

_ALL: weakref.WeakSet[Writer] = weakref.WeakSet()
_REGISTERED = False


class Writer:
    """Runs submitted callables one at a time on a daemon thread. Thread-safe."""

    def __init__(self, name: str = "headroom-memory-writer") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._tasks: deque[tuple[Callable[[], None], str | None]] = deque()
        self._unfinished = 0
        self._keys: Counter[str] = Counter()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _ALL.add(self)
        _register_at_exit()

    def submit(self, task: Callable[[], None], key: str | None = None) -> None:
        """Queue ``task`` (under ``key`` if given); it runs after every task submitted before."""
        with self._cond:
            if self._pid != os.getpid():  # forked: the parent's thread does not exist here
                self._pid, self._thread = os.getpid(), None
                self._tasks.clear()
                self._unfinished = 0
                self._keys.clear()
            self._tasks.append((task, key))
            self._unfinished += 1
            if key is not None:
                self._keys[key] += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every task submitted so far has run; False if ``timeout`` ran out."""
        with self._cond:
            if self._thread is threading.current_thread():
                return self._unfinished <= 1
            return self._cond.wait_for(lambda: self._unfinished == 0, timeout)

    def wait_key(self, key: str, timeout: float | None = None) -> bool:
        """Wait until no task submitted under ``key`` is queued or running; False on timeout.

        Called on the writer's own thread (an observer calling back in) it returns at once: its
        tasks cannot finish while it waits.
        """
        with self._cond:
            if self._thread is threading.current_thread() or self._pid != os.getpid():
                return True
            return self._cond.wait_for(lambda: not self._keys[key], timeout)

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished yet."""
        with self._cond:
            return self._unfinished

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: bool(self._tasks), timeout=30.0):
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return  # idle: the next submit starts a new thread
                task, key = self._tasks.popleft()
            try:
                task()
            except Exception:
                logger.exception("headroom.memory: a background store write failed")
            finally:
                with self._cond:
                    self._unfinished -= 1
                    if key is not None:
                        self._keys[key] -= 1
                        if not self._keys[key]:
                            del self._keys[key]
                    self._cond.notify_all()


def flush_all(timeout: float | None = None) -> bool:
    """Flush every live writer of this process; False if any timed out."""
    return all([w.flush(timeout) for w in list(_ALL)])


def _flush_all_at_exit() -> None:
    flush_all(30.0)


def _register_at_exit() -> None:
    """Flush at exit; registered on first use, so it runs before the stores close (exit hooks
    run most recent first)."""
    global _REGISTERED
    if not _REGISTERED:
        _REGISTERED = True
        process.at_exit(_flush_all_at_exit)
