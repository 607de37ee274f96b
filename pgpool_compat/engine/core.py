"""The pool's state machine: every decision, no I/O, no lock, no await.

A runner (``threaded``, ``asyncio``) calls it under its own lock or on its loop, does the
I/O the decisions call for (connect, probe, reset, dispose) with no lock held, and reports
the outcome back. The books:

- per key (an endpoint; ``None`` for single-key pools) a ``SubPool``: its idle connections,
  newest last (the psycopg2 face's ``_pool`` is this very list), and how many connections
  of that key the pool holds (idle, borrowed, being opened or reset);
- ``entries``: one ``Entry`` per connection held, by ``id(conn)`` (identity: a connection is
  never hashed, tagged or wrapped, and the entry keeps it alive so the id cannot be reused);
- ``out``: the borrowed entries, by ``id(conn)``;
- ``used`` / ``rused``: the psycopg2 face's checkout-key books (key -> connection,
  ``id(conn)`` -> key), its ``_used`` and ``_rused``; empty for every other face;
- ``waiters``: one first-come-first-served queue (``waiting.WaitQueue``, the rule every pool
  kind shares); a waiter's ``offer()`` says whether it took what it was offered, so one that
  timed out in the same instant is simply skipped;
- ``doomed``: entries to dispose, which the runner closes once its lock is released.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

from ..errors import (
    DUPLICATE_MESSAGE,
    NOT_BORROWED_MESSAGE,
    DuplicateConnection,
    NotBorrowed,
    PoolClosed,
    PoolTimeout,
)
from ..settings import Settings
from .entry import Entry
from .stats import Counters, Figures
from .waiting import SLOT, Grant, Waiter, WaitQueue

__all__ = ["UPKEEP_INTERVAL", "Core", "SubPool"]

#: How often lazy upkeep (idle expiry, leak scan) may run on the hot paths, in seconds.
UPKEEP_INTERVAL = 1.0


class SubPool:
    """The connections of one key: idle ones (newest last) and how many are held."""

    __slots__ = ("idle", "key", "opening", "size")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.idle: List[Any] = []  # connections; their entries are in Core.entries
        self.size = 0  # idle + borrowed + being opened or reset, of this key
        self.opening = 0  # reserved slots whose connection is not open yet


class Core:
    """One pool's books and rules. ``min_size``, ``max_size``, ``total_max_size``,
    ``min_idle`` and ``idle_cap`` are live: a runner may change them at any time."""

    def __init__(self, settings: Settings) -> None:
        self.min_size = settings.min_size
        self.max_size = settings.max_size  # per key
        self.total_max_size = settings.total_max_size
        self.min_idle = settings.min_idle  # per key
        # False: min_idle only shields idle connections from max_idle; none is opened for it.
        self.refill_min_idle = settings.refill
        self.idle_cap = settings.idle_cap  # per key; None: max_size
        self.lifo = settings.lifo
        self.max_idle = settings.max_idle
        self.max_lifetime = settings.max_lifetime
        self.may_go_stale = settings.max_idle is not None or settings.max_lifetime is not None
        self.subpools: Dict[Hashable, SubPool] = {}
        self.entries: Dict[int, Entry] = {}  # every connection held, by id(conn)
        self.out: Dict[int, Entry] = {}  # borrowed, by id(conn)
        self.used: Dict[Hashable, Any] = {}  # psycopg2 checkout key -> connection
        self.rused: Dict[int, Hashable] = {}  # id(conn) -> psycopg2 checkout key
        self.inherited: Dict[int, Any] = {}  # borrowed when the process forked, by id
        self.size = 0  # connections held over all keys, incl. slots being opened
        self.opening = 0
        self.settling = 0  # taken out of the books for I/O (reset, check), still counted
        self.waiters: WaitQueue[Waiter] = WaitQueue()
        self.doomed: List[Entry] = []
        self.closed = False
        self.counters = Counters()
        #: The driver state for a connection found in the books that the pool did not open
        #: (``Driver.adopt_state``, no I/O); the runner sets it.
        self.stray_state: Callable[[Any], Any] = _no_state
        self.timeouts = 0  # never popped: metrics export it as a monotonic counter
        self._needs_upkeep = settings.needs_upkeep
        #: When the hot paths next run lazy upkeep (``upkeep()``); never if nothing can go
        #: stale or leak. The runner sets the first one, the core keeps the schedule.
        self.upkeep_due = math.inf
        #: A return found upkeep due under the runner's lock: run it once that is released.
        self.upkeep_wanted = False

    # -- checkout --------------------------------------------------------------------------

    def take_idle(self, key: Hashable, now: float) -> Optional[Entry]:
        """Lend an idle connection of ``key`` (the newest, or the oldest when not lifo);
        stale ones met on the way are doomed."""
        # Subscripts in try blocks, not .get(): cheaper on this hot path, the misses rare.
        try:
            idle = self.subpools[key].idle
        except KeyError:  # no connection of that key yet
            return None
        while idle:
            conn = idle.pop() if self.lifo else idle.pop(0)
            conn_id = id(conn)  # once: each id() call makes an int object on the hot path
            try:
                entry = self.entries[conn_id]
            except KeyError:
                entry = self._adopt_stray(conn, self.subpools[key], now)
            if self.may_go_stale and self._stale(entry, now, len(idle) + 1):
                self._doom(entry, self.subpools[key])
                self.offer_slot()
                continue
            self.out[conn_id] = entry  # entry.conn is conn: the books key entries by it
            entry.checked_out_at = now
            return entry
        return None

    def subpool(self, key: Hashable) -> SubPool:
        """The sub-pool of ``key``, made empty on first use."""
        sub = self.subpools.get(key)
        if sub is None:
            sub = self.subpools[key] = SubPool(key)
        return sub

    def reserve(self, key: Hashable, *, evict: bool = True, force: bool = False) -> bool:
        """Count a slot for a new connection of ``key`` if both caps allow it (or ``force``).
        At the total cap, the oldest idle connection of another key is doomed to make room
        (``evict``)."""
        sub = self.subpool(key)
        if sub.size >= self.max_size and not force:
            return False
        at_total_cap = self.total_max_size is not None and self.size >= self.total_max_size
        if at_total_cap and not force and not (evict and self._evict_idle(key)):
            return False
        sub.size += 1
        sub.opening += 1
        self.size += 1
        self.opening += 1
        return True

    def lend(self, entry: Entry, now: float) -> None:
        """Book ``entry`` as borrowed."""
        self.out[id(entry.conn)] = entry
        entry.checked_out_at = now

    def adopt(self, conn: Any, state: Any, key: Hashable, now: float) -> Entry:
        """A reserved slot got its connection: its entry, counted but neither idle nor lent.

        Raises ``DuplicateConnection`` (the slot freed, ``conn`` left alone: someone else
        holds it) when the pool already holds that very object, or when it is ``None``.
        """
        sub = self.subpools[key]
        sub.opening -= 1
        self.opening -= 1
        if conn is None or id(conn) in self.entries:
            sub.size -= 1
            self.size -= 1
            self.offer_slot()
            what = (
                "None instead of a connection"
                if conn is None
                else "an object this pool already holds"
            )
            raise DuplicateConnection(DUPLICATE_MESSAGE % what)
        entry = Entry(conn, state, key, now, self.max_lifetime)
        self.entries[id(conn)] = entry
        return entry

    def abandon(self, key: Hashable) -> None:
        """A reserved slot will not get a connection (the connect failed or was cancelled)."""
        self.abandon_quietly(key)
        self.offer_slot()

    # -- waiting ---------------------------------------------------------------------------

    def enqueue(self, waiter: Waiter) -> None:
        self.waiters.enqueue(waiter)

    def give_up(self, waiter: Waiter, grant: Optional[Grant], now: float) -> None:
        """A waiter gave up (timeout, interrupt, cancel): it leaves the queue, or what it
        was granted in the same instant (``grant``) goes to the next in line."""
        self.waiters.give_up(waiter, grant, lambda granted: self._undo_grant(waiter, granted, now))

    def _undo_grant(self, waiter: Waiter, grant: Grant, now: float) -> None:
        if grant is SLOT:
            self.abandon(waiter.key)
        elif isinstance(grant, Entry) and self.out.pop(id(grant.conn), None) is not None:
            self.shelve(grant, now)  # unless close() took it meanwhile

    def timed_out(self, waited: float, limits: str) -> PoolTimeout:
        """Count a checkout that ran out of time; the error to raise. ``limits`` words the
        settings in the face's own keywords (``Settings.describe_limits``)."""
        self.counters.requests_errors += 1
        self.timeouts += 1
        return PoolTimeout(
            f"connection pool exhausted: no connection free after waiting {waited:.3f} s "
            f"({limits}, {len(self.waiters)} other callers still waiting)"
        )

    # -- return ----------------------------------------------------------------------------

    def checkin(
        self,
        entry: Entry,
        state: Optional[bool],
        now: float,
        discard: bool = False,
        borrowed: bool = True,
    ) -> Optional[bool]:
        """An entry neither idle nor lent (off ``out`` already) comes back to the pool: the
        one place that decides where it goes, for every runner and face.

        ``state`` is what the driver's ``return_state`` said: False usable as is, True
        needs a reset, None unusable (or the caller asked to ``discard`` it). A usable entry
        goes to the oldest waiter of its key, else idle; it is dropped if the pool is closed,
        it is past its lifetime or idle ones are at the cap. One that needs a reset is held
        for it (True is returned: the runner resets it, then calls ``settled``) unless it
        would be dropped anyway (no useless reset). ``borrowed``: it comes back from a
        borrower (not opened, reset or checked): its use is counted, and lazy upkeep asked
        for when due. Returns what became of it: False kept, True held, None dropped.
        """
        if borrowed:
            self.counters.usage_ms += (now - entry.checked_out_at) * 1000.0
            if now >= self.upkeep_due:
                self.upkeep_due = now + UPKEEP_INTERVAL  # one return per interval asks
                self.upkeep_wanted = True
        if state is False:  # the hot path: usable as is
            sub = self.subpools[entry.key]
            if self.closed:
                self._doom(entry, sub)
                return None
            if entry.expires_at is not None and now >= entry.expires_at:
                self.drop(entry)
                return None
            if self.waiters and self._hand_to_waiter(entry, now):
                return False
            cap = self.idle_cap
            if cap is None:
                cap = self.max_size
            if len(sub.idle) + self.settling >= cap:
                self.drop(entry)
                return None
            entry.idle_since = now
            sub.idle.append(entry.conn)
            return False
        if state is None:
            if not discard:
                self.counters.returns_bad += 1
        elif not entry.expired(now) and self.keeps(entry):
            self.hold(entry)
            return True
        self.drop(entry)
        return None

    def take_back(self, conn: Any) -> Optional[Entry]:
        """The entry of a borrowed connection, taken off the borrowed books; None for one
        borrowed before the process forked (the parent's: let go, never closed here)."""
        entry = self.out.pop(id(conn), None)
        if entry is None:
            if self.let_go_inherited(conn):
                return None
            raise NotBorrowed(NOT_BORROWED_MESSAGE)
        return entry

    def let_go_inherited(self, conn: Any) -> bool:
        """Whether ``conn`` was borrowed before the process forked (the parent's): if so it
        is forgotten, to be let go quietly, never closed here."""
        return self.inherited.pop(id(conn), None) is not None

    def shelve(self, entry: Entry, now: float) -> None:
        """A usable connection no borrower returned (new, reset, checked, or given back by
        a waiter that gave up): to a waiter, idle, or dropped, by ``checkin``'s rule."""
        self.checkin(entry, False, now, borrowed=False)

    def add_idle(self, entry: Entry, now: float) -> None:
        """Put a new connection idle whatever the cap (psycopg2.pool's ``_connect``)."""
        entry.idle_since = now
        self.subpools[entry.key].idle.append(entry.conn)

    def keeps(self, entry: Entry) -> bool:
        """Whether ``checkin`` would keep ``entry`` now (a waiter, or room under the cap)."""
        if self.waiters:
            return True
        cap = self.max_size if self.idle_cap is None else self.idle_cap
        return len(self.subpools[entry.key].idle) + self.settling < cap

    def drop(self, entry: Entry) -> None:
        """Doom a connection that is neither idle nor borrowed; its slot goes to a waiter."""
        self._doom(entry, self.subpools[entry.key])
        self.offer_slot()

    def forget(self, entry: Entry) -> None:
        """Stop counting a connection its user took off the books by hand (psycopg2.pool's
        books edited directly): never closed here; its slot goes to a waiter."""
        if self.entries.pop(id(entry.conn), None) is None:
            return
        sub = self.subpools[entry.key]
        sub.size -= 1
        self.size -= 1
        self.offer_slot()

    def hold(self, entry: Entry) -> None:
        """``entry`` (off the books) goes through I/O (reset, check) before it is shelved."""
        self.settling += 1

    def settled(self, entry: Entry, usable: bool, now: float) -> None:
        """The I/O begun with ``hold()`` ended: shelve the entry if usable, else drop it."""
        self.settling -= 1
        if usable:
            entry.last_good = now
            self.shelve(entry, now)
        else:
            self.drop(entry)

    # -- upkeep ----------------------------------------------------------------------------

    def take_all_idle(self, key: Hashable = None, every_key: bool = True) -> List[Entry]:
        """Take idle entries off the books for a check (each held, see ``hold``)."""
        subs = self.subpools.values() if every_key else [self.subpools.get(key)]
        taken: List[Entry] = []
        for sub in subs:
            if sub is not None:
                taken += [self._entry_of(conn, sub) for conn in sub.idle]
                sub.idle.clear()  # in place: the list object is the sub-pool's for good
        self.settling += len(taken)
        return taken

    def sweep(self, now: float, batch: int = 0) -> None:
        """Doom idle connections past their lifetime or idle past ``max_idle`` (never below
        ``min_size`` overall or ``min_idle`` per key), oldest first, at most ``batch``
        (0: no limit)."""
        if not self.may_go_stale:
            return
        dropped = 0
        for sub in self.subpools.values():
            keep: List[Any] = []
            idle = sub.idle
            for position, conn in enumerate(idle):
                entry = self._entry_of(conn, sub)
                left = len(idle) - position  # this one and the newer ones
                if (not batch or dropped < batch) and self._stale(entry, now, len(keep) + left):
                    self._doom(entry, sub)
                    dropped += 1
                else:
                    keep.append(conn)
            idle[:] = keep
        for _ in range(dropped):
            self.offer_slot()

    def deficit(self) -> List[Hashable]:
        """One key per connection to open to reach ``min_idle`` per key and ``min_size``."""
        wanted: List[Hashable] = []
        if self.min_idle and self.refill_min_idle:
            for sub in self.subpools.values():
                short = self.min_idle - len(sub.idle) - sub.opening
                wanted += [sub.key] * max(0, min(short, self.max_size - sub.size))
        missing = self.min_size - self.size - len(wanted)
        if missing > 0:
            default = self.subpools.get(None)
            room = self.max_size - (default.size if default is not None else 0)
            wanted += [None] * min(missing, room)
        return wanted

    def schedule_upkeep(self, now: float) -> None:
        """Lazy upkeep runs again ``UPKEEP_INTERVAL`` after ``now`` (if anything can go
        stale or leak); the hot paths check ``now >= upkeep_due``."""
        if self._needs_upkeep:
            self.upkeep_due = now + UPKEEP_INTERVAL
        self.upkeep_wanted = False

    def upkeep(self, now: float, batch: int, leak_limit: Optional[float]) -> List[Entry]:
        """Lazy upkeep's decisions: doom stale idle connections (see ``sweep``) and return
        the borrowed ones newly past ``leak_limit``, for the runner to report."""
        self.schedule_upkeep(now)
        self.sweep(now, batch)
        return [] if leak_limit is None else self.leaks(now, leak_limit)

    def leaks(self, now: float, limit: float) -> List[Entry]:
        """Borrowed entries out longer than ``limit`` not reported yet (now marked)."""
        found = []
        for entry in self.out.values():
            if not entry.leak_reported and now - entry.checked_out_at > limit:
                entry.leak_reported = True
                found.append(entry)
        return found

    def close(self, close_borrowed: bool, keep_books: bool = False) -> None:
        """Doom the idle connections (and the borrowed ones if asked); fail every waiter.
        ``keep_books``: the idle lists and checkout-key books stay as they were (closed
        connections in them), as psycopg2.pool's ``closeall()`` leaves them."""
        self.closed = True
        for sub in self.subpools.values():
            for conn in sub.idle:
                self._doom(self._entry_of(conn, sub), sub)
            if not keep_books:
                sub.idle.clear()
        if close_borrowed:
            for entry in self.out.values():
                self._doom(entry, self.subpools[entry.key])
            self.out.clear()
        self.waiters.fail_all(PoolClosed())

    def forget_all(self) -> List[Any]:
        """In a forked child: drop every book without closing anything (the connections
        are the parent's); borrowed ones are remembered so returning one is a no-op.
        Returns every connection dropped (idle, borrowed, being reset, doomed), for the
        runner to keep referenced for the child's life: one finalized in the child
        (asyncpg's ``__del__`` aborts its transport) cuts the parent's off."""
        forgotten = [entry.conn for entry in self.entries.values()]
        forgotten += [entry.conn for entry in self.doomed]
        for sub in self.subpools.values():
            forgotten += sub.idle  # with those appended to psycopg2's _pool by hand
        self.inherited.update((key, entry.conn) for key, entry in self.out.items())
        for sub in self.subpools.values():
            sub.idle.clear()  # in place: a face may hold these lists (psycopg2's _pool)
            sub.size = sub.opening = 0
        self.entries.clear()
        self.out.clear()
        self.used.clear()
        self.rused.clear()
        self.waiters.clear()
        self.doomed.clear()
        self.size = self.opening = self.settling = 0
        return forgotten

    def figures(self, name: str, kind: str) -> Figures:
        idle = sum(len(sub.idle) for sub in self.subpools.values())
        used = len(self.out)
        size = 0 if self.closed else self.size
        return Figures(
            name=name,
            kind=kind,
            idle=0 if self.closed else idle,
            used=used,
            opening=max(0, size - idle - used),
            size=size,
            max=self.max_size if self.total_max_size is None else self.total_max_size,
            idle_max=self.max_size if self.idle_cap is None else self.idle_cap,
            idle_min=self.min_size,
            pending=len(self.waiters),
            timeouts=self.timeouts,
        )

    def stats(self, pop: bool = False) -> Dict[str, int]:
        """Gauges and counters with psycopg_pool's key names; ``pop`` zeroes the counters."""
        closed = self.closed
        gauges = {
            "pool_min": self.min_size,
            "pool_max": self.max_size if self.total_max_size is None else self.total_max_size,
            "pool_size": 0 if closed else self.size,
            "pool_available": 0 if closed else self.idle_count,
            "requests_waiting": len(self.waiters),
        }
        gauges.update(self.counters.pop() if pop else self.counters.snapshot())
        return gauges

    @property
    def idle_count(self) -> int:
        return sum(len(sub.idle) for sub in self.subpools.values())

    def key_sizes(self, key: Hashable = None) -> Tuple[int, int, int]:
        """``(held, idle, borrowed)`` for sub-pool ``key``: held counts idle, borrowed and
        being opened or reset (all 0 once closed)."""
        sub = self.subpools.get(key)
        if sub is None or self.closed:
            return 0, 0, 0
        idle = len(sub.idle)
        return sub.size, idle, sub.size - idle - sub.opening

    # -- internals -------------------------------------------------------------------------

    def _stale(self, entry: Entry, now: float, idle_of_key: int) -> bool:
        """Past its lifetime, or idle past ``max_idle`` with more than the minimum open
        (``idle_of_key``: idle connections of its key, this one included)."""
        if entry.expires_at is not None and now >= entry.expires_at:
            return True
        max_idle = self.max_idle
        return (
            max_idle is not None
            and now - entry.idle_since > max_idle
            and self.size > self.min_size
            and idle_of_key > self.min_idle
        )

    def _doom(self, entry: Entry, sub: SubPool) -> None:
        """Off every book, to be disposed by the runner; the slot is not offered."""
        self.entries.pop(id(entry.conn), None)
        sub.size -= 1
        self.size -= 1
        self.doomed.append(entry)

    def _hand_to_waiter(self, entry: Entry, now: float) -> bool:
        """Lend ``entry`` to the oldest waiter of its key that accepts it."""
        key = entry.key

        def lent(waiter: Waiter) -> Optional[Grant]:
            if waiter.key != key:
                return None
            # Booked first: the waiter owns it once it accepts. Never lent before the waiter
            # came (a runner's ``now`` may predate its lock round): the psycopg2 face tells a
            # connection in flight from one unbooked by hand by that order.
            self.lend(entry, max(now, waiter.enqueued_at))
            return entry

        def refused(_waiter: Waiter, _grant: Grant) -> None:
            del self.out[id(entry.conn)]

        return self.waiters.serve(lent, refused)

    def offer_slot(self) -> None:
        """Room for one more connection (or a cap grew): reserve a slot for the oldest
        waiter it fits."""
        if not self.waiters or self.closed:
            return

        def reserved(waiter: Waiter) -> Optional[Grant]:
            return SLOT if self.reserve(waiter.key, evict=True) else None

        def refused(waiter: Waiter, _grant: Grant) -> None:
            self.abandon_quietly(waiter.key)

        self.waiters.serve(reserved, refused)

    def abandon_quietly(self, key: Hashable) -> None:
        """Undo a ``reserve()`` without offering the slot on (the caller does)."""
        sub = self.subpools[key]
        sub.opening -= 1
        sub.size -= 1
        self.opening -= 1
        self.size -= 1

    def _evict_idle(self, key: Hashable) -> bool:
        """Doom the oldest idle connection of another key; False if there is none."""
        oldest: Optional[SubPool] = None
        for sub in self.subpools.values():
            if sub.key == key or not sub.idle:
                continue
            if oldest is None or self._idle_since(sub) < self._idle_since(oldest):
                oldest = sub
        if oldest is None:
            return False
        self._doom(self._entry_of(oldest.idle.pop(0), oldest), oldest)
        return True

    def _idle_since(self, sub: SubPool) -> float:
        return self._entry_of(sub.idle[0], sub).idle_since

    def _entry_of(self, conn: Any, sub: SubPool) -> Entry:
        return self.entries.get(id(conn)) or self._adopt_stray(conn, sub, 0.0)

    def _adopt_stray(self, conn: Any, sub: SubPool, now: float) -> Entry:
        """An idle connection the engine did not open (code that appends to psycopg2's
        ``_pool`` itself): counted from now on."""
        entry = Entry(conn, self.stray_state(conn), sub.key, now, self.max_lifetime)
        self.entries[id(conn)] = entry
        sub.size += 1
        self.size += 1
        return entry


def _no_state(conn: Any) -> Any:
    return None
