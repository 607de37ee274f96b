"""Waiting for a connection: the one first-come-first-served rule every pool kind follows.

Callers who find nothing free queue; whatever frees up (a returned connection, a slot to
open one in, an error) goes to the oldest waiter it suits. A waiter that gave up in the same
instant (timed out, interrupted, cancelled) refuses it, and it goes on to the next, so
"timed out just as it was served" is one boolean, never a lost connection or slot.

The core (``Core``) serves its waiters through this queue; so does the queries
``PoolManager``, whose pools count their connections queries' way.
"""

from __future__ import annotations

from typing import Callable, Deque, Hashable, Optional, TypeVar, Union

from .entry import Entry

__all__ = ["SLOT", "Grant", "Slot", "WaitQueue", "Waiter"]


class Slot:
    """A grant meaning: a slot is reserved for you, open the connection yourself."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SLOT"


SLOT = Slot()

#: What a waiter is offered: a connection already booked to it, a slot, or an error.
Grant = Union[Entry, Slot, BaseException]


class Waiter:
    """A caller queued for a connection of ``key``. Runners subclass it with their own way
    of waking the caller; the queue only calls ``offer()``."""

    __slots__ = ("enqueued_at", "key")

    def __init__(self, key: Hashable, now: float) -> None:
        self.key = key
        self.enqueued_at = now

    def offer(self, grant: Grant) -> bool:
        """Hand ``grant`` over; return False (refusing it) if the caller already gave up."""
        raise NotImplementedError


W = TypeVar("W", bound=Waiter)


class WaitQueue(Deque[W]):  # a deque: len() and truth stay C-fast on hot paths
    """The waiters, oldest first."""

    def enqueue(self, waiter: W) -> None:
        """A caller starts waiting, behind every one already waiting."""
        self.append(waiter)

    def serve(
        self,
        grant_for: Callable[[W], Optional[Grant]],
        refused: Callable[[W, Grant], None],
        *,
        all_alike: bool = False,
    ) -> bool:
        """Offer the oldest waiter what ``grant_for`` makes for it (None: nothing suits it,
        it keeps its place and the next is asked) until one takes it; a grant refused is
        undone by ``refused`` before the next is asked. ``all_alike``: every waiter wants
        the same thing, so nothing for the oldest means nothing for any. Returns whether a
        waiter took a grant."""
        passed = 0  # waiters nothing suited, left in place at the front
        while passed < len(self):
            waiter = self[passed]
            grant = grant_for(waiter)
            if grant is None:
                if all_alike:
                    return False
                passed += 1
                continue
            del self[passed]
            if waiter.offer(grant):
                return True
            refused(waiter, grant)
        return False

    def withdraw(self, waiter: W) -> bool:
        """Forget a waiter that gave up; False if it was no longer queued (served)."""
        try:
            self.remove(waiter)
        except ValueError:
            return False
        return True

    def give_up(self, waiter: W, grant: Optional[Grant], undo: Callable[[Grant], None]) -> None:
        """``waiter`` stops waiting (timed out, interrupted, cancelled): out of the queue,
        or, if it was served in the same instant, its ``grant`` goes back through ``undo``
        (to the next in line), so a slot or connection is never lost with it."""
        if not self.withdraw(waiter) and grant is not None:
            undo(grant)

    def fail_all(self, error: BaseException) -> None:
        """Offer every waiter ``error`` (the pool closed or went away); the queue empties
        first, so a waiter that queues again meanwhile waits for what comes next."""
        waiters = list(self)
        self.clear()
        for waiter in waiters:
            waiter.offer(error)
