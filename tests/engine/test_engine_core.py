"""The sans-I/O core on its own: every decision, no lock, no I/O, no database.

Connections here are plain objects: the core never calls anything on them.
"""

from __future__ import annotations

from typing import Any, Hashable, List

import pytest

from pgpool_compat.engine.core import Core
from pgpool_compat.engine.entry import Entry
from pgpool_compat.engine.waiting import SLOT, Grant, Waiter, WaitQueue
from pgpool_compat.errors import DuplicateConnection, NotBorrowed, PoolClosed
from pgpool_compat.settings import Settings


class Conn:
    """An arbitrary resource: unhashable, equal to everything (the core must not care)."""

    __slots__ = ("n",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return True


class RecordingWaiter(Waiter):
    __slots__ = ("accept", "got")

    def __init__(self, key: Hashable, now: float = 0.0, accept: bool = True) -> None:
        super().__init__(key, now)
        self.accept = accept
        self.got: List[Grant] = []

    def offer(self, grant: Grant) -> bool:
        if self.accept:
            self.got.append(grant)
        return self.accept


def idle_of(core: Core, key: Hashable = None) -> List[Any]:
    """The idle list by identity (these connections compare equal to everything)."""
    return [Ident(conn) for conn in core.subpools[key].idle]


class Ident:
    """Compares by identity, whatever the wrapped object's ``__eq__`` says."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return self.obj is (other.obj if isinstance(other, Ident) else other)


def make(**kw: Any) -> Core:
    kw.setdefault("max_size", 2)
    return Core(Settings(**kw))


_counter = iter(range(10**6))


def open_one(core: Core, key: Hashable = None, now: float = 0.0, lend: bool = False) -> Entry:
    assert core.reserve(key)
    entry = core.adopt(Conn(next(_counter)), None, key, now)
    if lend:
        core.lend(entry, now)
    else:
        core.shelve(entry, now)
    return entry


def test_lifo_hands_out_the_newest_idle_and_fifo_the_oldest() -> None:
    for lifo, expected in ((True, 1), (False, 0)):
        core = make(lifo=lifo)
        entries = [open_one(core, now=t) for t in (0.0, 1.0)]
        assert core.take_idle(None, 2.0) is entries[expected]
        assert id(entries[expected].conn) in core.out


def test_per_key_cap_and_total_cap() -> None:
    core = make(max_size=2, total_max_size=3)
    assert core.reserve("a") and core.reserve("a")
    assert not core.reserve("a")  # per-key cap
    assert core.reserve("b")
    assert not core.reserve("b")  # total cap, nothing idle to evict
    assert core.size == 3 and core.opening == 3


def test_total_cap_evicts_the_oldest_idle_of_another_key() -> None:
    core = make(max_size=2, total_max_size=2)
    old = open_one(core, "a", now=1.0)
    open_one(core, "b", now=2.0)
    assert core.reserve("c")
    assert core.doomed == [old]
    assert core.size == 2


def test_prefill_reserve_never_evicts() -> None:
    core = make(max_size=2, total_max_size=1)
    open_one(core, "a")
    assert not core.reserve("b", evict=False)
    assert not core.doomed


def test_returned_connection_goes_to_the_oldest_waiter_of_its_key() -> None:
    core = make(max_size=1)
    entry = open_one(core, "a", lend=True)
    other_key = RecordingWaiter("b")
    first, second = RecordingWaiter("a"), RecordingWaiter("a")
    for waiter in (other_key, first, second):
        core.enqueue(waiter)
    core.shelve(core.take_back(entry.conn), 5.0)
    assert first.got == [entry] and not second.got and not other_key.got
    assert core.out[id(entry.conn)] is entry and entry.checked_out_at == 5.0
    assert list(core.waiters) == [other_key, second]


def test_a_waiter_that_gave_up_is_skipped_in_the_same_instant() -> None:
    core = make(max_size=1)
    entry = open_one(core, lend=True)
    gone, next_one = RecordingWaiter(None, accept=False), RecordingWaiter(None)
    core.enqueue(gone)
    core.enqueue(next_one)
    core.shelve(core.take_back(entry.conn), 1.0)
    assert next_one.got == [entry] and not core.waiters


def test_no_waiter_takes_it_so_it_goes_idle() -> None:
    core = make(max_size=1)
    entry = open_one(core, lend=True)
    core.enqueue(RecordingWaiter(None, accept=False))
    core.shelve(core.take_back(entry.conn), 1.0)
    assert idle_of(core) == [entry.conn] and not core.out


def test_freed_slot_goes_to_the_oldest_waiter_whose_key_has_room() -> None:
    core = make(max_size=1, total_max_size=2)
    a = open_one(core, "a", lend=True)
    open_one(core, "b", lend=True)
    wants_b, wants_c = RecordingWaiter("b"), RecordingWaiter("c")
    core.enqueue(wants_b)
    core.enqueue(wants_c)
    core.drop(core.take_back(a.conn))  # frees room in total, but "b" is at its own cap
    assert wants_c.got == [SLOT] and not wants_b.got
    assert core.subpools["c"].opening == 1 and core.size == 2


def test_expired_connection_is_never_handed_to_a_waiter() -> None:
    core = make(max_size=1, max_lifetime=10.0)
    entry = open_one(core, lend=True)
    waiter = RecordingWaiter(None)
    core.enqueue(waiter)
    core.shelve(core.take_back(entry.conn), 100.0)
    assert waiter.got == [SLOT]  # the slot instead, to open a fresh one
    assert core.doomed == [entry]


def test_duplicate_object_is_refused_and_its_slot_freed() -> None:
    core = make(max_size=2)
    entry = open_one(core)
    assert core.reserve(None)
    with pytest.raises(DuplicateConnection):
        core.adopt(entry.conn, None, None, 0.0)
    assert core.size == 1 and core.opening == 0
    assert not core.doomed  # the object is someone else's: never closed


def test_take_back_of_a_stranger_or_twice_raises_and_changes_nothing() -> None:
    core = make()
    entry = open_one(core, lend=True)
    with pytest.raises(NotBorrowed):
        core.take_back(Conn(-1))  # equal to everything: identity decides
    core.shelve(core.take_back(entry.conn), 0.0)
    with pytest.raises(NotBorrowed):
        core.take_back(entry.conn)
    assert core.size == 1 and idle_of(core) == [entry.conn]


def test_idle_cap_dooms_returns_above_it() -> None:
    core = make(max_size=3, idle_cap=1)
    entries = [open_one(core, lend=True) for _ in range(3)]
    for entry in entries:
        core.shelve(core.take_back(entry.conn), 1.0)
    assert len(core.subpools[None].idle) == 1 and len(core.doomed) == 2 and core.size == 1


def test_checkin_counts_the_use_and_shelves_holds_or_drops() -> None:
    core = make(max_size=6, idle_cap=1, max_lifetime=100.0)
    clean, dirty, broken, thrown, old, spare = [open_one(core, lend=True) for _ in range(6)]
    old.expires_at = 5.0
    assert core.checkin(core.take_back(clean.conn), False, 2.0) is False
    assert idle_of(core) == [clean.conn] and clean.idle_since == 2.0
    assert core.counters.usage_ms == 2000.0, "time out, from checkout to return"
    assert core.checkin(core.take_back(spare.conn), True, 2.0) is None, "over the idle cap"
    assert core.take_idle(None, 3.0) is clean  # room under the cap again
    assert core.checkin(core.take_back(dirty.conn), True, 3.0) is True and core.settling == 1
    assert core.checkin(core.take_back(broken.conn), None, 3.0) is None
    assert core.checkin(core.take_back(thrown.conn), None, 3.0, discard=True) is None
    assert core.checkin(core.take_back(old.conn), True, 6.0) is None, "expired: no reset"
    assert core.counters.returns_bad == 1, "only the connection the driver found unusable"
    assert [e.conn for e in core.doomed] == [spare.conn, broken.conn, thrown.conn, old.conn]


def test_checkin_asks_for_upkeep_once_an_interval() -> None:
    core = make(max_idle=10.0)
    entries = [open_one(core, lend=True) for _ in range(2)]
    core.schedule_upkeep(0.0)
    core.checkin(core.take_back(entries[0].conn), False, 0.5)
    assert not core.upkeep_wanted, "not due before the interval"
    core.checkin(core.take_back(entries[1].conn), False, 1.5)
    assert core.upkeep_wanted
    core.upkeep(1.6, 0, None)
    assert not core.upkeep_wanted and core.upkeep_due == 2.6
    never = make()  # nothing can go stale or leak: no upkeep at all
    never.schedule_upkeep(0.0)
    entry = open_one(never, lend=True)
    never.checkin(never.take_back(entry.conn), False, 1e9)
    assert not never.upkeep_wanted and never.upkeep_due == float("inf")


def test_sweep_keeps_the_minimum_and_respects_the_batch() -> None:
    core = make(max_size=5, min_size=1, max_idle=10.0)
    for _ in range(4):
        open_one(core, now=0.0)
    core.sweep(5.0)
    assert not core.doomed
    core.sweep(20.0, batch=2)
    assert len(core.doomed) == 2
    core.sweep(20.0)
    assert len(core.doomed) == 3 and core.size == 1  # min_size kept


def test_sweep_keeps_min_idle_per_key() -> None:
    core = make(max_size=5, min_idle=1, max_idle=10.0)
    for key in ("a", "a", "b"):
        open_one(core, key)
    core.sweep(20.0)
    assert {key: len(sub.idle) for key, sub in core.subpools.items()} == {"a": 1, "b": 1}


def test_take_idle_dooms_stale_and_lends_the_next() -> None:
    core = make(max_size=3, max_lifetime=10.0)
    old = open_one(core, now=0.0)
    fresh_entry = Entry(Conn(-2), None, None, 50.0, None)
    assert core.reserve(None)
    core.subpools[None].opening -= 1
    core.opening -= 1
    core.entries[id(fresh_entry.conn)] = fresh_entry
    core.subpools[None].idle.insert(0, fresh_entry.conn)
    taken = core.take_idle(None, 100.0)
    assert taken is fresh_entry and core.doomed == [old]


def test_deficit_counts_min_size_and_min_idle() -> None:
    core = make(max_size=3, min_size=2)
    assert core.deficit() == [None, None]
    core = make(max_size=2, min_idle=2)
    open_one(core, "a")
    assert core.deficit() == ["a"]


def test_leaks_reported_once() -> None:
    core = make()
    entry = open_one(core, lend=True)
    assert core.leaks(5.0, 10.0) == []
    assert core.leaks(11.0, 10.0) == [entry]
    assert core.leaks(12.0, 10.0) == []


def test_close_fails_waiters_and_dooms_idle_and_optionally_borrowed() -> None:
    for close_borrowed in (True, False):
        core = make(max_size=2)
        idle = open_one(core)
        borrowed = open_one(core, lend=True)
        waiter = RecordingWaiter(None)
        core.enqueue(waiter)
        core.close(close_borrowed)
        assert isinstance(waiter.got[0], PoolClosed)
        doomed = core.doomed
        assert idle in doomed and (borrowed in doomed) is close_borrowed
        if not close_borrowed:  # returned later: closed then
            core.shelve(core.take_back(borrowed.conn), 1.0)
            assert borrowed in core.doomed


def test_abandoned_slot_goes_to_a_waiter() -> None:
    core = make(max_size=1)
    assert core.reserve(None)
    waiter = RecordingWaiter(None)
    core.enqueue(waiter)
    core.abandon(None)
    assert waiter.got == [SLOT] and core.size == 1


def test_forget_all_remembers_borrowed_without_closing() -> None:
    core = make()
    borrowed = open_one(core, lend=True)
    idle = open_one(core)
    forgotten = core.forget_all()
    assert core.size == 0 and not core.doomed and not idle_of(core)
    assert core.inherited == {id(borrowed.conn): borrowed.conn}
    # For the runner to keep referenced in the child: never finalized there.
    assert {id(conn) for conn in forgotten} == {id(borrowed.conn), id(idle.conn)}


def test_figures() -> None:
    core = make(max_size=3, min_size=1, idle_cap=2)
    open_one(core)
    open_one(core, lend=True)
    assert core.reserve(None)
    core.enqueue(RecordingWaiter(None))
    figures = core.figures("p", "kind")
    assert (figures.idle, figures.used, figures.opening, figures.size) == (1, 1, 1, 3)
    assert (figures.max, figures.idle_max, figures.idle_min, figures.pending) == (3, 2, 1, 1)


# -- the waiting rule (engine/waiting.py), shared by the core and the queries manager ------


def test_wait_queue_serves_the_oldest_it_suits_and_hands_a_refused_grant_on() -> None:
    queue = WaitQueue()
    other, gone, taker, last = (
        RecordingWaiter("b"), RecordingWaiter("a", accept=False), RecordingWaiter("a"),
        RecordingWaiter("a"),
    )  # fmt: skip
    for waiter in (other, gone, taker, last):
        queue.enqueue(waiter)
    undone: List[Any] = []
    grant = object()

    def grant_for(waiter: Waiter) -> Any:
        return grant if waiter.key == "a" else None

    assert queue.serve(grant_for, lambda waiter, g: undone.append((waiter, g)))
    assert undone == [(gone, grant)]  # undone before the next was asked
    assert taker.got == [grant] and not last.got and not other.got
    assert list(queue) == [other, last]  # the one it did not suit kept its place


def test_wait_queue_all_alike_stops_at_the_oldest() -> None:
    queue = WaitQueue()
    first, second = RecordingWaiter(None), RecordingWaiter(None)
    queue.enqueue(first)
    queue.enqueue(second)
    asked: List[Waiter] = []

    def nothing(waiter: Waiter) -> Any:
        asked.append(waiter)
        return None

    assert not queue.serve(nothing, lambda waiter, g: None, all_alike=True)
    assert asked == [first] and list(queue) == [first, second]
    assert not queue.serve(nothing, lambda waiter, g: None)
    assert asked == [first, first, second]


def test_wait_queue_give_up_leaves_or_hands_on_what_it_was_just_granted() -> None:
    queue = WaitQueue()
    queued, served = RecordingWaiter(None), RecordingWaiter(None)
    queue.enqueue(queued)
    undone: List[Any] = []
    queue.give_up(queued, None, undone.append)
    assert not queue and undone == []
    queue.give_up(served, SLOT, undone.append)  # served in the same instant: not queued
    assert undone == [SLOT]
    queue.give_up(served, None, undone.append)  # nothing granted: nothing to hand on
    assert undone == [SLOT]


def test_wait_queue_fail_all_empties_it_before_offering() -> None:
    queue = WaitQueue()
    requeued = RecordingWaiter(None)

    class Requeues(RecordingWaiter):
        def offer(self, grant: Grant) -> bool:
            queue.enqueue(requeued)  # e.g. a caller that starts over on the error
            return super().offer(grant)

    first = Requeues(None)
    queue.enqueue(first)
    error = PoolClosed()
    queue.fail_all(error)
    assert first.got == [error] and not requeued.got
    assert list(queue) == [requeued]


def test_core_give_up_returns_a_slot_or_connection_granted_in_the_same_instant() -> None:
    core = make(max_size=1)
    entry = open_one(core, lend=True)
    late, next_one = RecordingWaiter(None), RecordingWaiter(None)
    core.enqueue(late)
    core.shelve(core.take_back(entry.conn), 1.0)  # handed to ``late``...
    assert late.got == [entry]
    core.enqueue(next_one)
    core.give_up(late, entry, 2.0)  # ...which gave up just then: it goes on
    assert next_one.got == [entry] and core.out[id(entry.conn)] is entry
    core.give_up(next_one, entry, 3.0)
    assert idle_of(core) == [entry.conn] and not core.out
