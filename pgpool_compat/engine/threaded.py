"""The threaded runner: the core under one lock, every I/O with the lock released.

Choreography: take the lock, let the core decide (lend an idle entry, reserve a slot,
queue), release it, then do the I/O the decision calls for (probe, check, connect, reset,
dispose) and come back under the lock to record the outcome. A background keeper thread
(opt-in) keeps the minimum open with capped, jittered backoff, trims stale idle
connections and reports leaks. Forked children start from empty books; at exit keepers stop.
"""

from __future__ import annotations

import atexit
import os
import random
import threading
import time
import weakref
from typing import Any, Dict, Hashable, List, Optional, Protocol, Tuple

from ..driver import ConnT, Driver
from ..errors import PoolClosed, PoolTimeout
from ..settings import Settings, check_seconds
from . import log
from .base import RunnerBase
from .checks import CheckPolicy
from .entry import Entry
from .stats import Figures, live_runners, register, unregister
from .waiting import SLOT, Grant, Waiter

__all__ = ["DEFAULT", "KEPT_AFTER_FORK", "ThreadedRunner"]

monotonic = time.monotonic

#: In a forked child, every connection the parent's pools held when it forked (both runner
#: kinds): referenced for the child's life, never finalized here, since a finalizer
#: (asyncpg's ``__del__``) would abort the socket and the event-loop registration the
#: parent still uses. Never closed, never handed out.
KEPT_AFTER_FORK: List[Any] = []


class _Default:
    """``acquire()``'s timeout when not given: the pool's own setting."""

    __slots__ = ()

    def __repr__(self) -> str:  # shown in the faces' signatures
        return "<the pool's timeout>"


DEFAULT: Any = _Default()


class _ThreadWaiter(Waiter):
    """A thread blocked in ``acquire``, woken by releasing a lock it holds."""

    __slots__ = ("_wake", "gave_up", "grant")

    def __init__(self, key: Hashable, now: float) -> None:
        super().__init__(key, now)
        self.grant: Optional[Grant] = None
        self.gave_up = False
        self._wake = threading.Lock()
        self._wake.acquire()  # held until offer()

    def offer(self, grant: Grant) -> bool:
        if self.gave_up:  # timed out in the same instant: the core offers it on
            return False
        self.grant = grant
        self._wake.release()
        return True

    def sleep(self, deadline: Optional[float]) -> None:
        if deadline is None:
            self._wake.acquire()
        else:
            self._wake.acquire(timeout=max(0.0, deadline - monotonic()))


class ThreadedRunner(RunnerBase[Driver[ConnT]]):
    """One pool's engine for threads. See ENGINE_API.md for the verbs."""

    def __init__(
        self,
        settings: Settings,
        driver: Driver[ConnT],
        *,
        kind: str = "pool",
        reentrant: bool = False,
        metrics_label: Optional[str] = None,
        prefill: bool = False,
    ) -> None:
        """``prefill``: open ``min_size`` now (a connect error closes the runner and is
        raised). The keeper (``settings.background``) starts only after that: started
        first, it would reserve the slots and the constructor would return without the
        minimum open, its connect errors logged instead of raised.

        ``reentrant`` (the psycopg2 face): the lock is an RLock, and a checkout out of time
        (``timeout=0`` included) that finds the pool full only because connections are
        being reset or checked waits for them, ``check_timeout`` at most, as if the
        returning thread held the lock: psycopg2.pool holds its lock through the rollback,
        and its face's reset is bounded. Every other face fails at its deadline."""
        super().__init__(settings, driver, kind)
        #: What metrics call this pool; None: its name (a face may name its server instead).
        self.metrics_label = metrics_label
        # Reentrant for the psycopg2 face, whose subclasses call in holding ``_lock``.
        self._lock: Any = threading.RLock() if reentrant else threading.Lock()
        self._checks = CheckPolicy(settings, driver, self.name)
        self._capture_stacks = settings.leak_timeout is not None
        self.unlogged_losses = 0
        self._keeper: Optional[_Keeper] = None
        self._connect_failures = 0  # in a row, for the "reconnected" log line
        self._reentrant = reentrant
        register(self)
        if prefill:
            try:
                self.prefill()
            except BaseException:
                self.close()
                raise
        if settings.background:
            self.start_keeper()

    # -- borrowing -------------------------------------------------------------------------

    def acquire(self, key: Hashable = None, timeout: Optional[float] = DEFAULT) -> ConnT:
        """Borrow a connection of ``key``; wait up to ``timeout`` seconds (the pool's
        setting by default; None: for ever; 0: not at all), then raise ``PoolTimeout``."""
        if timeout is not DEFAULT:  # a caller's own: validated as the setting is
            timeout = check_seconds("timeout", timeout, allow_zero=True)
        core = self.core
        lock = self._lock
        lock.acquire()  # not ``with``: cheaper, and this is the hot path
        try:
            if core.closed:
                core.counters.requests_errors += 1
                raise PoolClosed()
            core.counters.requests_num += 1
            now = monotonic()
            upkeep = now >= core.upkeep_due
            entry = core.take_idle(key, now)
            doomed = core.doomed  # taken in this lock round: see release()
            if doomed:
                core.doomed = []
        finally:
            lock.release()
        if doomed:
            self._dispose(doomed)
        if upkeep:
            self._tidy(upkeep)
        if entry is not None:
            # Hot path: the socket probe inline, the policy object only for slow checks.
            probe = self._checks.probe
            try:
                alive = probe is None or probe(entry.conn, entry.state)
            except Exception as error:  # a driver's probe that raises: dead, as
                log.check_raised(self.name, error)  # CheckPolicy.passes rules
                alive = False
            if not alive:
                self._lost(entry, now, "socket")  # probed once: a second probe could lie
            elif not self._checks.slow:
                if self._capture_stacks:
                    entry.capture_stack()
                if self.observer is not None:  # every checkout served, queued or not
                    self.observer.waited(self.name, monotonic() - now)
                conn: ConnT = entry.conn
                return conn
            elif self._validate(entry, now, None, probed=True):
                return self._served(entry.conn, now)
        if timeout is DEFAULT:
            timeout = self.settings.timeout
        return self._served(self._acquire_slow(key, timeout, now), now)

    def _served(self, conn: ConnT, started: float) -> ConnT:
        """A checkout served off the fast path: timed for metrics when they are on."""
        if self.observer is not None:
            self.observer.waited(self.name, monotonic() - started)
        return conn

    def release(self, conn: ConnT, discard: bool = False) -> None:
        """Give ``conn`` back; it is reset outside the lock if it needs it, closed if it
        cannot be kept or ``discard`` is true."""
        core = self.core
        lock = self._lock
        lock.acquire()  # not ``with``: hot path
        try:
            entry = core.out.pop(id(conn), None)
            if entry is None:
                if core.closed:
                    raise PoolClosed()
                entry = core.take_back(conn)  # raises NotBorrowed, worded once in the core
                if entry is None:
                    return  # borrowed before a fork: the parent's, never closed here
            state = core.checkin(
                entry, None if discard else self.driver.return_state(conn), monotonic(), discard
            )
            # Taken in this lock round and closed right after it: a slot the core freed may
            # let another thread connect, and the server must not see more than max_size.
            doomed = core.doomed
            if doomed:
                core.doomed = []
        finally:
            lock.release()
        # Hot path: the call only when there is something to do after the lock round.
        if doomed or state or core.upkeep_wanted or self.observer is not None:
            self.after_return(entry, state, doomed)

    def after_return(self, entry: Entry, state: Optional[bool], doomed: List[Entry]) -> None:
        """The I/O of a return (``Core.checkin`` booked it), lock released: close the
        doomed, upkeep if due, reset."""
        if doomed:
            self._dispose(doomed)
        if self.core.upkeep_wanted:
            self._tidy(True)
        if state:
            self._settle(entry)
        if self.observer is not None:
            self.observer.used(self.name, monotonic() - entry.checked_out_at)

    def lend_idle_probed(self, key: Hashable, now: float) -> Optional[Entry]:
        """(Lock held) Lend an idle connection of ``key`` that passes the socket probe, run
        here under the lock (a zero-timeout poll, no round trip): the psycopg2 face's
        one-lock-round checkout. Dead ones are counted and doomed; ``_dispose_doomed()``
        logs them once the lock is released."""
        core = self.core
        probe = self._checks.probe
        while True:
            entry = core.take_idle(key, now)
            if entry is None or probe is None:
                return entry
            try:
                if probe(entry.conn, entry.state):
                    return entry
            except Exception as error:  # a driver's probe that raises: dead (see acquire)
                log.check_raised(self.name, error)
            self._checks.lost(entry, now)
            core.counters.connections_lost += 1
            del core.out[id(entry.conn)]
            core.drop(entry)
            self.unlogged_losses += 1

    # -- other verbs -----------------------------------------------------------------------

    def prefill(self, n: Optional[int] = None, key: Hashable = None) -> int:
        """Open connections of ``key`` until it holds ``n`` (default ``min_size``, at most
        ``max_size``); return how many were opened. A connect error is raised after the
        connections opened so far were put idle."""
        core = self.core
        with self._lock:
            if core.closed:
                raise PoolClosed()
            sub_size = core.subpools[key].size if key in core.subpools else 0
            wanted = core.min_size if n is None else n
            missing = max(0, min(wanted, core.max_size) - sub_size)
            reserved = 0
            while reserved < missing and core.reserve(key, evict=False):
                reserved += 1
        return self._open_reserved(key, reserved)

    def check(self, key: Hashable = None, every_key: bool = True) -> int:
        """Check every idle connection now (the configured check; the socket probe if
        none) and close the dead ones; return how many."""
        with self._lock:
            if self.core.closed:
                raise PoolClosed()
            batch = self.core.take_all_idle(key, every_key)
        return self._recheck(batch, self._checks.full_check)

    def close_idle(self) -> int:
        """Close every idle connection now and return how many; the pool stays open and
        borrowed connections are untouched (nextorm's ``close_all()``, escudeiro's
        ``dispose()``). Freed slots go to waiters."""
        with self._lock:
            if self.core.closed:
                return 0
            batch = self.core.take_all_idle()
            now = monotonic()
            for entry in batch:
                self.core.settled(entry, False, now)
        self._dispose_doomed()
        return len(batch)

    def take_idle(self, key: Hashable = None) -> Optional[ConnT]:
        """Lend an idle connection of ``key`` that passes the checks, or return None at once
        (never opens one: the psycopg2 face opens through a subclass's ``_connect``)."""
        while True:
            with self._lock:
                if self.core.closed:
                    raise PoolClosed()
                now = monotonic()
                entry = self.core.take_idle(key, now)
            if self.core.doomed:
                self._dispose_doomed()
            if entry is None:
                return None
            if self._validate(entry, now, None):
                return entry.conn  # type: ignore[no-any-return]

    def open_unbooked(self, key: Hashable = None) -> Entry:
        """Open a connection now, over the caps if need be, and return its entry, counted
        but neither idle nor lent (psycopg2.pool's ``_connect``, which books it itself)."""
        with self._lock:
            if self.core.closed:
                raise PoolClosed()
            self.core.reserve(key, evict=False, force=True)
        return self._open(key, lend=None)

    def close(self, close_borrowed: bool = True, keep_books: bool = False) -> None:
        """Close the idle connections (and the borrowed ones, unless told not to), fail
        the waiters, stop the keeper. Idempotent. ``keep_books``: see ``Core.close``."""
        with self._lock:
            if self.core.closed:
                return
            self.core.close(close_borrowed, keep_books)
            keeper, self._keeper = self._keeper, None
        unregister(self)
        if keeper is not None:
            keeper.stop()
        self._dispose_doomed()
        log.closed(self.name)

    def resize(self, min_size: Optional[int] = None, max_size: Optional[int] = None) -> None:
        """Change the live limits (validated by the face); waiters get any new room."""
        with self._lock:
            core = self.core
            if min_size is not None:
                core.min_size = min_size
            if max_size is not None:
                grown = max_size - core.max_size
                core.max_size = max_size
                for _ in range(max(0, grown)):
                    core.offer_slot()

    def figures(self) -> Figures:
        with self._lock:
            return self.core.figures(self.name, self.kind)

    def stats(self, pop: bool = False) -> Dict[str, int]:
        """Gauges and counters with psycopg_pool's key names; ``pop`` zeroes the counters."""
        with self._lock:
            return self.core.stats(pop)

    def key_sizes(self, key: Hashable = None) -> Tuple[int, int, int]:
        """``(held, idle, borrowed)`` for sub-pool ``key`` (all 0 once closed)."""
        with self._lock:
            return self.core.key_sizes(key)

    @property
    def idle_count(self) -> int:
        with self._lock:
            return 0 if self.core.closed else self.core.idle_count

    @property
    def size(self) -> int:
        with self._lock:
            return 0 if self.core.closed else self.core.size

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {'closed' if self.closed else 'open'}>"

    # -- checkout internals ----------------------------------------------------------------

    def _acquire_slow(self, key: Hashable, timeout: Optional[float], started: float) -> ConnT:
        """No usable idle connection at once: reserve a slot and connect, or queue."""
        core = self.core
        deadline = None if timeout is None else started + timeout
        while True:
            waiter: Optional[_ThreadWaiter] = None
            reserved = False
            with self._lock:
                if core.closed:
                    core.counters.requests_errors += 1
                    raise PoolClosed()
                now = monotonic()
                entry = core.take_idle(key, now)
                wait_until = deadline
                if entry is None:
                    if core.reserve(key):
                        reserved = True
                    else:
                        if deadline is not None and now >= deadline:
                            if not (core.settling and self._reentrant):
                                raise self.timed_out(started, timeout)
                            # Out of time, but a return is being reset: idle in a moment
                            # (the reset is bounded), as if the returning thread held the lock.
                            wait_until = now + self.settings.check_timeout
                        waiter = _ThreadWaiter(key, now)
                        core.enqueue(waiter)
                        core.counters.requests_queued += 1
            if core.doomed:
                self._dispose_doomed()
            if reserved:
                return self._open_lent(key)
            if waiter is not None:
                grant = self._wait(waiter, wait_until, started, timeout)
                if grant is SLOT:
                    return self._open_lent(key)
                assert isinstance(grant, Entry)
                entry = grant
            assert entry is not None
            # Pings here spend the caller's timeout (if it has one: 0 means do not queue):
            # stalled connections in a row must not make acquire wait past it.
            if self._validate(entry, now, deadline if timeout else None):
                return entry.conn  # type: ignore[no-any-return]

    def _validate(
        self, entry: Entry, now: float, deadline: Optional[float], probed: bool = False
    ) -> bool:
        """Run the checkout checks on a lent entry (no lock held; the socket probe unless
        ``probed`` already); drop it if it fails."""
        try:
            alive, how = self._checks.passes(entry, now, deadline, probed)
        except BaseException:  # KeyboardInterrupt mid-ping: state unknown, close it
            self._drop_lent(entry)
            raise
        if alive:
            if self._checks.slow:  # the check did I/O: close() may have taken it meanwhile
                with self._lock:
                    if id(entry.conn) not in self.core.out:
                        self.core.counters.requests_errors += 1
                        raise PoolClosed()
            if self._capture_stacks:
                entry.capture_stack()
            return True
        self._lost(entry, now, how)
        return False

    def _lost(self, entry: Entry, now: float, how: str) -> None:
        """A lent entry failed its check (``how``): counted, dropped, closed."""
        self._checks.lost(entry, now)
        with self._lock:
            self.core.counters.connections_lost += 1
        self._drop_lent(entry)
        log.dead_dropped(self.name, how)

    def _drop_lent(self, entry: Entry) -> None:
        with self._lock:
            # Not lent any more if close() took it meanwhile: already doomed, once.
            if self.core.out.pop(id(entry.conn), None) is not None:
                self.core.drop(entry)
        self._dispose_doomed()

    def _reentrant_held(self) -> bool:
        """Whether this thread holds the (reentrant) lock outside the runner's own rounds."""
        return self._reentrant and bool(self._lock._is_owned())

    def _wait(
        self,
        waiter: _ThreadWaiter,
        deadline: Optional[float],
        started: float,
        timeout: Optional[float],
    ) -> Grant:
        """Sleep in the queue until served or out of time (lock released)."""
        # A reentrant lock may still be held by the caller around this call (psycopg2.pool's
        # ThreadedConnectionPool holds it around a subclass's _getconn): let it go while
        # asleep, as Condition.wait does, or no other thread could return a connection.
        held = self._lock._release_save() if self._reentrant_held() else None
        try:
            waiter.sleep(deadline)
        except BaseException:  # KeyboardInterrupt while asleep: no ghost left in the queue
            if held is not None:
                self._lock._acquire_restore(held)
            with self._lock:
                waiter.gave_up = True
                self.core.give_up(waiter, waiter.grant, monotonic())
            self._dispose_doomed()
            raise
        if held is not None:
            self._lock._acquire_restore(held)
        core = self.core
        error: Optional[BaseException] = None
        with self._lock:
            waited = monotonic() - waiter.enqueued_at
            core.counters.requests_wait_ms += waited * 1000.0
            grant = waiter.grant
            if grant is None:
                waiter.gave_up = True
                core.give_up(waiter, None, monotonic())
                error = self.timed_out(started, timeout)
            elif isinstance(grant, BaseException):
                core.counters.requests_errors += 1
                error = grant
            elif core.closed:  # closed between the hand-off and this wake-up
                core.give_up(waiter, grant, monotonic())
                core.counters.requests_errors += 1
                error = PoolClosed()
        if error is not None:
            raise error
        assert grant is not None
        return grant

    def timed_out(self, started: float, timeout: Optional[float]) -> PoolTimeout:
        """Count and log a checkout out of time; the error to raise (lock held)."""
        waited = monotonic() - started
        log.timed_out(self.name, waited)
        limits = self.settings.describe_limits(timeout, self.core.max_size)
        return self.core.timed_out(waited, limits)

    # -- opening ---------------------------------------------------------------------------

    def _open_lent(self, key: Hashable) -> ConnT:
        """Open a connection in a reserved slot and lend it (lock released)."""
        try:
            entry = self._open(key, lend=True)
        except BaseException:
            with self._lock:
                self.core.counters.requests_errors += 1
            raise
        if self._capture_stacks:
            entry.capture_stack()
        return entry.conn  # type: ignore[no-any-return]

    def _open(self, key: Hashable, lend: Optional[bool]) -> Entry:
        """Connect and prepare in a reserved slot; the entry is lent (True), shelved (False)
        or left to the caller, counted but on no list (None)."""
        core = self.core
        started = monotonic()
        conn: Any = None
        try:
            conn = self.driver.connect_to(key)
            state = self.driver.prepare_for(conn, key)
        except BaseException as error:
            if conn is not None:
                self.driver.dispose(conn)  # a failed prepare (configure) must not leak it
            with self._lock:
                core.counters.connections_errors += 1
                self._connect_failures += 1
                core.abandon(key)
            log.connect_failed(self.name, error)
            raise
        now = monotonic()
        with self._lock:
            failures, self._connect_failures = self._connect_failures, 0
            closed = core.closed
            if closed:
                core.abandon(key)
            else:
                entry = core.adopt(conn, state, key, now)  # DuplicateConnection: slot freed
                core.counters.connections_num += 1
                core.counters.connections_ms += (now - started) * 1000.0
                if lend:
                    core.lend(entry, now)
                elif lend is not None:
                    core.shelve(entry, now)
        if closed:
            self.driver.dispose_with(conn, state)
            raise PoolClosed()
        if failures:
            log.reconnected(self.name, failures)
        log.opened(self.name)
        if self.observer is not None:
            self.observer.created(self.name, now - started)
        return entry

    def _open_reserved(self, key: Hashable, reserved: int) -> int:
        """Open ``reserved`` connections in slots already counted, shelving each."""
        opened = 0
        try:
            while reserved:
                reserved -= 1  # _open gives the slot back itself if it fails
                self._open(key, lend=False)
                opened += 1
        finally:
            if reserved:
                with self._lock:
                    for _ in range(reserved):
                        self.core.abandon(key)
            self._dispose_doomed()
        return opened

    # -- returning -------------------------------------------------------------------------

    def _settle(self, entry: Entry) -> None:
        """Reset a returned connection with the lock released, then shelve or drop it."""
        failure: Optional[BaseException] = None
        try:
            self.driver.reset(entry.conn, entry.state)
        except BaseException as error:  # KeyboardInterrupt too: books first, re-raised below
            failure = error
        with self._lock:
            if failure is not None:
                self.core.counters.returns_bad += 1
            self.core.settled(entry, failure is None, monotonic())
        self._dispose_doomed()
        if failure is not None:
            log.reset_failed(self.name, failure)
            if not isinstance(failure, Exception):
                raise failure

    def _recheck(self, batch: List[Entry], verdict: Any) -> int:
        """Check entries taken off the books (held); shelve the live, drop the dead."""
        results: List[bool] = []
        interrupted: Optional[BaseException] = None
        try:
            for entry in batch:
                results.append(verdict(entry))
        except BaseException as error:  # KeyboardInterrupt: books first
            interrupted = error
        checked = len(results)
        results += [False] * (len(batch) - checked)  # unknown state: closed, not "lost"
        now = monotonic()
        with self._lock:
            for index, (entry, alive) in enumerate(zip(batch, results)):
                if not alive and index < checked:
                    self.core.counters.connections_lost += 1
                    self._checks.lost(entry, now)
                idle_since = entry.idle_since
                self.core.settled(entry, alive, now)
                # A check is not a use: the idle time runs on, or max_idle never fires when
                # the keeper probes every second.
                entry.idle_since = idle_since
        self._dispose_doomed()
        dead = results[:checked].count(False)
        for _ in range(dead):
            log.dead_dropped(self.name, "check")
        if interrupted is not None:
            raise interrupted
        return dead

    def _dispose_doomed(self) -> None:
        """Close what the core doomed, and log the dead ``lend_idle_probed`` dropped (lock
        released): whichever thread gets here first does it, once."""
        with self._lock:
            doomed, self.core.doomed = self.core.doomed, []
            lost, self.unlogged_losses = self.unlogged_losses, 0
        self._dispose(doomed)
        for _ in range(lost):
            log.dead_dropped(self.name, "socket")

    def _dispose(self, doomed: List[Entry]) -> None:
        dispose = self.driver.dispose_with
        for entry in doomed:
            dispose(entry.conn, entry.state)

    # -- upkeep ----------------------------------------------------------------------------

    def _tidy(self, upkeep: bool) -> None:
        """After a hot path released the lock: upkeep if due, close what was doomed."""
        if upkeep:
            self._upkeep()
        self._dispose_doomed()

    def _upkeep(self) -> None:
        """Lazy upkeep from the hot paths: expire stale idle connections, report leaks."""
        limit = self.settings.leak_timeout
        with self._lock:
            now = monotonic()
            leaked = self.core.upkeep(now, self.settings.sweep_batch, limit)
            ages = [(now - entry.checked_out_at, entry.checkout_stack) for entry in leaked]
        for age, stack in ages:
            log.leak(self.name, age, limit or 0.0, stack)

    def _maintain(self) -> None:
        """One keeper pass: drop dead idle connections, upkeep, refill to the minimum."""
        if self.closed:
            return
        if self._checks.probe is not None:
            with self._lock:
                batch = self.core.take_all_idle()
            self._recheck(batch, self._checks.probe_alive)
        self._upkeep()
        self._dispose_doomed()
        with self._lock:
            if self.core.closed:
                return
            keys = [key for key in self.core.deficit() if self.core.reserve(key, evict=False)]
        for position, key in enumerate(keys):
            try:
                self._open(key, lend=False)
            except BaseException:
                with self._lock:
                    for other in keys[position + 1 :]:
                        self.core.abandon(other)
                raise

    def start_keeper(self) -> None:
        """Start the background keeper (``background=True`` does at construction, after
        the construction-time prefill)."""
        self._keeper = _Keeper(self)
        self._keeper.start()

    def _after_fork_in_child(self) -> None:
        """Forget what the parent owns, without closing it: closing would end its sessions."""
        # A parent thread may have held it at fork time. Re-initialised in place: the psycopg2
        # face's subclasses hold this very object as ``_lock``.
        self._lock._at_fork_reinit()
        KEPT_AFTER_FORK.extend(self.core.forget_all())
        had_keeper, self._keeper = self._keeper is not None, None
        if had_keeper and not self.core.closed:  # the parent's thread does not exist here
            self.start_keeper()


class _Maintained(Protocol):
    """What a keeper drives: a runner, or the queries manager's sweeper."""

    name: str

    @property
    def closed(self) -> bool: ...

    def _maintain(self) -> None: ...


class _Keeper(threading.Thread):
    """The background thread of one pool (refill, expire, report leaks), or of anything
    else with a ``_maintain()`` pass to run every ``interval`` seconds (the queries
    manager's cleaner). Holds its target weakly; failed passes back off."""

    INTERVAL = 1.0
    MAX_BACKOFF = 30.0
    #: How long ``close()`` waits for the thread; one stuck connecting cleans up after itself.
    STOP_WAIT = 1.0

    def __init__(self, runner: _Maintained, interval: Optional[float] = None) -> None:
        super().__init__(name=f"pgpool_compat-keeper-{runner.name}", daemon=True)
        self._runner_ref = weakref.ref(runner)
        self.interval = self.INTERVAL if interval is None else interval
        self.stopping = threading.Event()
        self._failures = 0

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop after the pass under way, waiting for it ``timeout`` seconds at most
        (default ``STOP_WAIT``)."""
        self.stopping.set()
        if self is not threading.current_thread():
            self.join(timeout=self.STOP_WAIT if timeout is None else timeout)

    def run(self) -> None:
        while not self.stopping.is_set():
            runner = self._runner_ref()
            if runner is None or runner.closed:
                return
            pause = self.interval
            try:
                runner._maintain()
                self._failures = 0
            except Exception as error:
                self._failures += 1
                pause = self.backoff(self._failures)
                log.keeper_failed(runner.name, error, pause)
            del runner  # let an abandoned pool be collected while this thread sleeps
            self.stopping.wait(pause)

    @classmethod
    def backoff(cls, failures: int) -> float:
        """Pause after ``failures`` failed passes in a row: doubling, capped, jittered so
        that pools do not retry in step."""
        capped = min(cls.MAX_BACKOFF, 0.1 * 2.0 ** float(min(failures, 16)))
        return float(capped * random.uniform(0.5, 1.0))


def _live() -> List[ThreadedRunner[Any]]:
    return [runner for runner in live_runners() if isinstance(runner, ThreadedRunner)]


def _after_fork_in_child() -> None:
    for runner in _live():
        runner._after_fork_in_child()


def _stop_keepers_at_exit() -> None:
    for runner in _live():
        keeper = runner._keeper
        if keeper is not None:
            keeper.stopping.set()


if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_keepers_at_exit)
