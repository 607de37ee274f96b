"""First-come-first-served hand-off for callers waiting on a full pool.

A returned connection (or a freed slot) goes straight to the oldest waiter, so a thread
that arrives later can never barge ahead of one that has been waiting.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Deque, Hashable, Optional

__all__ = ["WaitQueue", "Waiter"]


class Waiter:
    """One caller blocked in ``getconn``. The pool fills exactly one outcome, then wakes it."""

    __slots__ = ("_wake", "conn", "enqueued_at", "error", "key", "shared", "slot")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.enqueued_at = time.monotonic()
        self.conn: Any = None  # a connection, already booked under ``key``
        self.shared = False  # ``conn`` is another caller's, checked out under the same key
        self.slot = False  # a reserved slot: the waiter opens the connection itself
        self.error: Optional[BaseException] = None
        self._wake = threading.Lock()
        self._wake.acquire()  # held until the pool serves this waiter

    @property
    def served(self) -> bool:
        return self.conn is not None or self.slot or self.error is not None

    def wake(self) -> None:
        self._wake.release()

    def sleep(self, deadline: float) -> bool:
        """Block until served or ``deadline`` (monotonic) passes; return whether woken."""
        return self._wake.acquire(timeout=max(0.0, deadline - time.monotonic()))


class WaitQueue(Deque[Waiter]):
    """The pool's waiters, oldest first; a deque, so emptiness and ``popleft`` cost nothing.

    Every method runs under the pool's lock.
    """

    def enqueue(self, key: Hashable) -> Waiter:
        waiter = Waiter(key)
        self.append(waiter)
        return waiter

    def discard(self, waiter: Waiter) -> None:
        """Forget a waiter that gave up; a no-op when it was served in the meantime."""
        with contextlib.suppress(ValueError):
            self.remove(waiter)

    def fail_all(self, error: BaseException) -> None:
        """Wake every waiter with ``error`` (the pool is closing)."""
        while self:
            waiter = self.popleft()
            waiter.error = error
            waiter.wake()
