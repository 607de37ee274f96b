"""The psycopg2.pool contract, on an engine that waits, checks, resets and survives faults.

psycopg2.pool's books stay the source of truth: ``_pool`` (idle connections, newest last),
``_used`` (key -> connection), ``_rused`` (id(connection) -> key) and ``_keys``. Subclasses
in the wild read and write them, and every valid call sequence gives the same results as
psycopg2.pool. Beside them the engine keeps the slots reserved by callers doing I/O with no
lock held, a queue of waiters, a record per connection and counters.

Rules: no lock is held across network I/O (reserve under the lock, do the I/O outside, fix
the books under the lock again); every error path leaves the books consistent; connections
to close are collected under the lock and closed after it is released.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Dict, Hashable, Iterator, List, Optional, Tuple, TypeVar, Union

import psycopg2.pool as _stock

from .errors import PoolError, PoolTimeout
from .health import Driver, Psycopg2Driver
from .options import PoolOptions, split_options
from .records import ConnRecord
from .stats import GAUGE_KEYS, PoolStats
from .waiting import Waiter, WaitQueue

__all__ = [
    "AbstractConnectionPool",
    "PoolError",
    "PoolTimeout",
    "SimpleConnectionPool",
    "ThreadedConnectionPool",
]

logger = logging.getLogger("pgpool_compat")

PoolT = TypeVar("PoolT", bound="AbstractConnectionPool")

CLOSED = "connection pool is closed"
EXHAUSTED = "connection pool exhausted"
UNKEYED = "trying to put unkeyed connection"

#: PostgreSQL cannot serve more connections than this (its MAX_BACKENDS).
MAX_CONNECTIONS = 0x3FFFF

#: How often lazy housekeeping (idle expiry, leak scan) may run on the hot paths.
HOUSEKEEPING_INTERVAL = 1.0


class _Slot:
    """Marks a checkout that reserved a slot and must open its connection itself."""


_SLOT = _Slot()

_Pending = Union[_Slot, Waiter, None]


class AbstractConnectionPool(_stock.AbstractConnectionPool):  # type: ignore[misc]
    """Generic key-based pooling code: psycopg2.pool's contract plus opt-in behaviour.

    ``pool_*`` keywords configure the pool (see ``PoolOptions``); every other argument
    goes to ``psycopg2.connect`` unchanged.
    """

    #: Whether ``pool_timeout`` makes sense: only when other threads can return connections.
    _allow_timeout = True

    def __init__(self, minconn: Any, maxconn: Any, *args: Any, **kwargs: Any) -> None:
        self.minconn, self.maxconn = _sizes(minconn, maxconn)
        options, connect_kwargs = split_options(kwargs, allow_timeout=self._allow_timeout)
        self.closed = False
        self._args: Tuple[Any, ...] = args
        self._kwargs: Dict[str, Any] = connect_kwargs
        self._pool: List[Any] = []
        self._used: Dict[Hashable, Any] = {}
        self._rused: Dict[int, Hashable] = {}
        self._keys = 0

        self._options: PoolOptions = options
        self._driver: Driver[Any] = self._new_driver(args, connect_kwargs, options)
        self._stats = PoolStats()
        # Reentrant: a subclass may call _getconn while holding it, as stock allowed.
        self._lock = threading.RLock()
        self._books_changed = threading.Condition(self._lock)
        self._waiters = WaitQueue()
        self._records: Dict[int, ConnRecord] = {}
        self._doomed: List[Any] = []  # to close once the lock is released
        self._reserved = 0  # slots held by callers opening or checking a connection
        self._settling = 0  # returned connections being reset on their way back
        self._pending_keys: Dict[Hashable, int] = {}  # keys whose connect is in flight
        self._inherited: Dict[int, Any] = {}  # borrowed when the process forked
        self._keeper: Optional[_Keeper] = None
        # Decided once, read on every checkout.
        self._legacy_connect = type(self)._connect is not AbstractConnectionPool._connect
        self._idle_cap = self.maxconn if options.max_idle is not None else self.minconn
        self._max_idle = options.max_idle
        self._lifo = options.lifo
        self._probe = self._driver.is_alive if options.check is not None else None
        self._return_state = self._driver.return_state
        self._slow_check = options.check == "ping" or callable(options.check)
        self._capture_stacks = options.leak_timeout is not None
        self._needs_housekeeping = (
            options.max_idle is not None
            or options.max_lifetime is not None
            or options.leak_timeout is not None
        )
        self._housekeeping_due = time.monotonic() + HOUSEKEEPING_INTERVAL
        # When a connection is found dead, ping ("ping" mode) those created before it.
        self._suspect_before = -1.0
        self._suspect_marked_at = -1.0

        try:
            for _ in range(self.minconn):
                started = time.monotonic()
                self._connect()
                self._count_connect(started)
        except BaseException:
            for conn in self._pool:
                self._driver.dispose(conn)
            raise
        _live_pools.add(self)
        if options.background:
            self._start_keeper()

    # -- overridable hooks, as in psycopg2.pool --------------------------------------------

    def _new_driver(
        self, args: Tuple[Any, ...], kwargs: Dict[str, Any], options: PoolOptions
    ) -> Driver[Any]:
        """The driver that opens, checks, resets and closes this pool's connections."""
        return Psycopg2Driver(args, kwargs, options)

    def _connect(self, key: Optional[Hashable] = None) -> Any:
        """Create a new connection and assign it to 'key' if not None."""
        conn = self._driver.connect()
        self._remember(conn)
        if key is not None:
            self._used[key] = conn
            self._rused[id(conn)] = key
        else:
            self._pool.append(conn)
        return conn

    def _getkey(self) -> int:
        """Return a new unique key."""
        self._keys += 1
        return self._keys

    # -- the contract's operations ---------------------------------------------------------

    def _getconn(self, key: Optional[Hashable] = None) -> Any:
        """Get a free connection and assign it to 'key' if not None."""
        pending: _Pending = None
        try:
            with self._lock:
                if self.closed:
                    self._stats.requests_errors += 1
                    raise PoolError(CLOSED)
                self._stats.requests_num += 1
                if key is None:
                    key = self._getkey()
                if self._needs_housekeeping and time.monotonic() >= self._housekeeping_due:
                    self._housekeeping()
                conn = self._used.get(key)
                if conn is None and self._pool:
                    conn = self._take_idle(key)
                if conn is None:
                    conn, pending = self._acquire_slow(key)
        finally:
            if self._doomed:
                self._close_doomed()
        if pending is None:
            return conn
        if pending is _SLOT:
            return self._open_reserved(key)
        assert isinstance(pending, Waiter)
        return self._await_turn(pending)

    def _putconn(self, conn: Any, key: Optional[Hashable] = None, close: bool = False) -> None:
        """Put away a connection."""
        with self._lock:
            if self.closed:
                raise PoolError(CLOSED)
            conn_id = id(conn)
            if key is None:
                key = self._rused.get(conn_id)
                if key is None:
                    if self._inherited.pop(conn_id, None) is not None:
                        return  # borrowed before a fork: dropped, never closed in the child
                    raise PoolError(UNKEYED)
            elif conn is None or self._used.get(key) is not conn:
                conn = self._explicit_key_conn(conn, key)
                conn_id = id(conn)
            del self._used[key]
            del self._rused[conn_id]
            now = time.monotonic()
            record = self._records.get(conn_id)
            expired = False
            if record is not None:
                self._stats.usage_ms += (now - record.checked_out_at) * 1000.0
                expired = record.expires_at is not None and now >= record.expires_at
            state: Optional[bool] = None
            if (
                not close
                and not expired
                and (len(self._pool) + self._settling < self._idle_cap or self._waiters)
            ):
                state = self._return_state(conn)
                if state is False:  # clean: no I/O needed
                    if record is not None:
                        record.idle_since = record.last_good = now
                    if self._waiters:
                        self._shelve(conn)
                    else:
                        self._pool.append(conn)
                elif state is None:
                    self._stats.returns_bad += 1
                else:
                    self._settling += 1
            if state is None:
                self._doomed.append(self._forget(conn))
                self._free_slot()
            if self._needs_housekeeping and now >= self._housekeeping_due:
                self._housekeeping()
        if self._doomed:
            self._close_doomed()
        if state:
            self._settle(conn)

    def _closeall(self) -> None:
        """Close all connections, borrowed ones too; the books stay as they were."""
        with self._lock:
            if self.closed:
                raise PoolError(CLOSED)
            self.closed = True
            self._doomed.extend(self._pool)
            self._doomed.extend(self._used.values())
            self._waiters.fail_all(PoolError(CLOSED))
            self._books_changed.notify_all()
            keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.stop()
        self._close_doomed()
        logger.debug("%s: closed", self._label)

    # -- additions: context managers, stats, checks ----------------------------------------

    @contextmanager
    def connection(self, key: Optional[Hashable] = None) -> Iterator[Any]:
        """Check a connection out; commit on success, roll back on error, always return it."""
        conn = self.getconn(key)
        try:
            yield conn
        except BaseException:
            _rollback_quietly(conn)
            raise
        else:
            conn.commit()
        finally:
            try:
                self.putconn(conn, key)
            except PoolError:
                if not self.closed:
                    raise  # a closed pool has already closed the connection

    def __enter__(self: PoolT) -> PoolT:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.closed:
            self.closeall()

    def get_stats(self) -> Dict[str, int]:
        """Gauges and counters, with psycopg_pool's key names."""
        with self._lock:
            return {**self._gauges(), **self._stats.snapshot()}

    def pop_stats(self) -> Dict[str, int]:
        """Like ``get_stats()``, then zero the counters."""
        with self._lock:
            return {**self._gauges(), **self._stats.pop()}

    def check(self) -> int:
        """Probe every idle connection now and drop the dead ones; return how many.

        Uses the ``pool_check`` setting ("ping" pings every one); with ``pool_check=None``
        the socket probe still runs, since the caller asked for a check.
        """
        with self._lock:
            if self.closed:
                raise PoolError(CLOSED)
            batch, self._pool = self._pool, []
            self._reserved += len(batch)
            records = [self._records.get(id(conn)) or self._remember(conn) for conn in batch]
        verdicts = [self._passes_check(conn, record) for conn, record in zip(batch, records)]
        with self._lock:
            self._reserved -= len(batch)
            now = time.monotonic()
            for conn, record, alive in zip(batch, records, verdicts):
                if alive and not self.closed:
                    self._shelve(conn)
                    continue
                if not alive:
                    self._lost(record, now)
                self._doomed.append(self._forget(conn))
                self._free_slot()
            self._books_changed.notify_all()
        self._close_doomed()
        return verdicts.count(False)

    @property
    def name(self) -> str:
        """``pool_name``, or a name made from the pool's id; used in logs."""
        return self._options.name or f"pool-{id(self):x}"

    def __repr__(self) -> str:
        # Never the DSN: it may carry a password.
        state = "closed" if self.closed else f"idle={len(self._pool)} used={len(self._used)}"
        return (
            f"<{type(self).__name__} {self.name!r} min={self.minconn} max={self.maxconn} "
            f"{state}>"
        )

    # -- checkout internals (lock held unless said otherwise) ------------------------------

    def _take_idle(self, key: Hashable) -> Any:
        """Book the newest idle connection that passes the checks, or return None."""
        pool = self._pool
        now = time.monotonic()
        while pool:
            conn = pool.pop() if self._lifo else pool.pop(0)
            conn_id = id(conn)
            record = self._records.get(conn_id) or self._remember(conn)
            if self._stale(record, now, self._open_count() + 1):
                self._doomed.append(self._forget(conn))
                continue
            if self._probe is not None and not self._probe(conn, record.state):
                self._lost(record, now)
                self._doomed.append(self._forget(conn))
                continue
            if self._slow_check and self._needs_slow_check(record, now):
                if not self._slow_check_unlocked(conn, record, now):
                    continue
                if key in self._used:  # a caller with the same key won meanwhile
                    self._shelve(conn)
                    return self._used[key]
            self._used[key] = conn
            self._rused[conn_id] = key
            record.checked_out_at = now
            if self._capture_stacks:
                record.capture_stack()
            return conn
        return None

    def _acquire_slow(self, key: Hashable) -> Tuple[Any, _Pending]:
        """No idle connection: reserve a slot, queue, wait for the books, or give up."""
        while True:
            if key in self._pending_keys:
                self._books_changed.wait()  # another caller is connecting this very key
            elif len(self._used) + self._reserved + self._settling < self.maxconn:
                self._reserve(key)
                return None, _SLOT
            elif self._options.timeout is not None:
                self._stats.requests_queued += 1
                return None, self._waiters.enqueue(key)
            elif self._settling:
                self._books_changed.wait()  # a return is being reset: it will be idle soon
            else:
                self._stats.requests_errors += 1
                raise PoolError(EXHAUSTED)
            conn = self._used.get(key)
            if conn is None and self._pool:
                conn = self._take_idle(key)
            if conn is not None:
                return conn, None

    def _needs_slow_check(self, record: ConnRecord, now: float) -> bool:
        if self._options.check != "ping":
            return True  # a user's check callable runs on every checkout
        return now - record.idle_since > self._options.ping_after or (
            record.created_at <= self._suspect_before
            and record.last_good < self._suspect_marked_at
        )

    def _slow_check_unlocked(self, conn: Any, record: ConnRecord, now: float) -> bool:
        """Run a check that does I/O with the lock released; the slot stays reserved."""
        self._reserved += 1
        self._lock.release()
        try:
            alive = self._passes_check(conn, record)
        finally:
            self._lock.acquire()
            self._reserved -= 1
        if alive and not self.closed:
            record.last_good = time.monotonic()
            return True
        if not alive:
            self._lost(record, now)
        self._doomed.append(self._forget(conn))
        if self.closed:
            raise PoolError(CLOSED)
        return False

    def _passes_check(self, conn: Any, record: ConnRecord) -> bool:
        """Run the configured check, doing I/O; call with the lock released."""
        check = self._options.check
        try:
            if callable(check):
                return bool(check(conn))
            if check == "ping":
                return self._driver.ping(conn, record.state, self._options.check_timeout)
            return self._driver.is_alive(conn, record.state)
        except Exception as error:
            logger.info("%s: check raised %s", self._label, type(error).__name__)
            return False

    def _lost(self, record: ConnRecord, now: float) -> None:
        self._stats.connections_lost += 1
        self._suspect_before = max(self._suspect_before, record.created_at)
        self._suspect_marked_at = now
        logger.info("%s: dropped a dead connection", self._label)

    def _stale(self, record: ConnRecord, now: float, open_count: int) -> bool:
        """Past its lifetime, or idle too long while the pool is above minconn."""
        if record.expires_at is not None and now >= record.expires_at:
            return True
        max_idle = self._max_idle
        return max_idle is not None and now - record.idle_since > max_idle and (
            open_count > self.minconn
        )

    def _reserve(self, key: Hashable) -> None:
        self._reserved += 1
        self._pending_keys[key] = self._pending_keys.get(key, 0) + 1

    def _unreserve(self, key: Hashable) -> None:
        self._reserved -= 1
        left = self._pending_keys[key] - 1
        if left:
            self._pending_keys[key] = left
        else:
            del self._pending_keys[key]
        self._books_changed.notify_all()

    def _open_reserved(self, key: Hashable) -> Any:
        """Open a connection in a reserved slot and book it under ``key`` (lock released)."""
        try:
            conn = self._open()
        except BaseException:
            with self._lock:
                self._stats.requests_errors += 1
                self._unreserve(key)
                self._free_slot()
            raise
        with self._lock:
            self._unreserve(key)
            if not self.closed:
                winner = self._used.get(key)
                if winner is not None:  # another caller got this key first: keep ours idle
                    self._shelve(conn)
                    return winner
                self._used[key] = conn
                self._rused[id(conn)] = key
                record = self._records[id(conn)]
                record.checked_out_at = time.monotonic()
                if self._capture_stacks:
                    record.capture_stack()
                return conn
            self._forget(conn)
        self._driver.dispose(conn)
        raise PoolError(CLOSED)

    def _open(self) -> Any:
        """Open and prepare a new connection; the slot is already reserved (lock released)."""
        started = time.monotonic()
        try:
            if self._legacy_connect:
                conn = self._open_through_override()
            else:
                conn = self._driver.connect()
                try:
                    with self._lock:
                        record = self._remember(conn, prepare=False)
                    record.state = self._driver.prepare(conn)
                except BaseException:
                    with self._lock:
                        self._forget(conn)
                    self._driver.dispose(conn)
                    raise
        except BaseException as error:
            with self._lock:
                self._stats.connections_errors += 1
            logger.warning("%s: connection failed: %s", self._label, type(error).__name__)
            raise
        with self._lock:
            self._count_connect(started)
        logger.debug("%s: opened a connection", self._label)
        return conn

    def _open_through_override(self) -> Any:
        """Call a subclass's ``_connect`` under the lock, as psycopg2.pool does.

        An overriding ``_connect`` does its own bookkeeping on the shared dicts, so it runs
        under the lock; the engine then takes the new connection back out of ``_pool``.
        """
        with self._lock:
            conn = self._connect()
            if self._pool and self._pool[-1] is conn:
                self._pool.pop()
            if id(conn) not in self._records:
                self._remember(conn)
        return conn

    def _count_connect(self, started: float) -> None:
        self._stats.connections_num += 1
        self._stats.connections_ms += (time.monotonic() - started) * 1000.0

    def _remember(self, conn: Any, prepare: bool = True) -> ConnRecord:
        """Start the record of a connection the pool has not seen, preparing it."""
        state = self._driver.prepare(conn) if prepare else None
        record = ConnRecord(conn, state, time.monotonic(), self._options.max_lifetime)
        self._records[id(conn)] = record
        return record

    def _forget(self, conn: Any) -> Any:
        self._records.pop(id(conn), None)
        return conn

    def _await_turn(self, waiter: Waiter) -> Any:
        """Sleep in the queue until served or timed out (lock released)."""
        timeout = self._options.timeout or 0.0
        woken = waiter.sleep(waiter.enqueued_at + timeout)
        with self._lock:
            waited = time.monotonic() - waiter.enqueued_at
            self._stats.requests_wait_ms += waited * 1000.0
            if not woken and not waiter.served:
                self._waiters.discard(waiter)
                self._stats.requests_errors += 1
                logger.info("%s: checkout timed out after %.3f s", self._label, waited)
                raise PoolTimeout(
                    f"{EXHAUSTED}: no connection free after waiting {waited:.3f} s "
                    f"(pool_timeout={timeout:g}, maxconn={self.maxconn}, "
                    f"{len(self._waiters)} other callers still waiting)"
                )
            if waiter.error is not None:
                self._stats.requests_errors += 1
                raise waiter.error
            if waiter.conn is not None:
                return waiter.conn
        return self._open_reserved(waiter.key)

    # -- return internals ------------------------------------------------------------------

    def _explicit_key_conn(self, conn: Any, key: Hashable) -> Any:
        """Validate ``putconn(conn, key)`` before any change; ``conn=None`` means key's own."""
        booked = self._used.get(key)
        if conn is None and booked is not None:
            return booked
        raise PoolError(
            f"trying to put a connection under key {key!r}, which it was not checked out "
            "with; nothing was changed"
        )

    def _settle(self, conn: Any) -> None:
        """Reset a returned connection with the lock released, then shelve or drop it."""
        record = self._records.get(id(conn))
        failure: Optional[BaseException] = None
        try:
            self._driver.reset(conn, record.state if record is not None else None)
        except Exception as error:
            failure = error
        with self._lock:
            self._settling -= 1
            self._books_changed.notify_all()
            if failure is None and not self.closed:
                if record is not None:
                    record.idle_since = record.last_good = time.monotonic()
                self._shelve(conn)
                return
            if failure is not None:
                self._stats.returns_bad += 1
            self._forget(conn)
            self._free_slot()
        if failure is not None:
            logger.warning(
                "%s: reset of a returned connection failed (%s); connection discarded",
                self._label,
                type(failure).__name__,
            )
        self._driver.dispose(conn)

    def _shelve(self, conn: Any) -> None:
        """Hand a usable connection to the oldest waiter, or put it back idle."""
        if not self._waiters:
            self._pool.append(conn)
            return
        waiter = self._waiters.popleft()
        self._used[waiter.key] = conn
        self._rused[id(conn)] = waiter.key
        record = self._records.get(id(conn)) or self._remember(conn)
        record.checked_out_at = time.monotonic()
        if self._capture_stacks:
            record.capture_stack()
        waiter.conn = conn
        waiter.wake()

    def _free_slot(self) -> None:
        """A connection is gone: give its slot to the oldest waiter, who will connect."""
        if self._waiters and not self.closed:
            waiter = self._waiters.popleft()
            self._reserve(waiter.key)
            waiter.slot = True
            waiter.wake()

    def _close_doomed(self) -> None:
        """Close the connections collected under the lock (call with the lock released)."""
        with self._lock:
            doomed, self._doomed = self._doomed, []
        for conn in doomed:
            self._driver.dispose(conn)

    # -- housekeeping ----------------------------------------------------------------------

    def _housekeeping(self) -> None:
        """Lazy upkeep on the hot paths, at most once per HOUSEKEEPING_INTERVAL."""
        now = time.monotonic()
        self._housekeeping_due = now + HOUSEKEEPING_INTERVAL
        self._expire_idle(now)
        self._report_leaks(now)

    def _expire_idle(self, now: float) -> None:
        """Drop idle connections past their lifetime or idle time, never below minconn."""
        open_count = self._open_count()
        keep: List[Any] = []
        for conn in self._pool:  # oldest first: those are the ones to close
            record = self._records.get(id(conn))
            if record is not None and self._stale(record, now, open_count):
                self._doomed.append(self._forget(conn))
                open_count -= 1
            else:
                keep.append(conn)
        self._pool[:] = keep

    def _drop_dead_idle(self, now: float) -> None:
        """Probe idle connections without a round trip and drop those the server closed."""
        alive: List[Any] = []
        for conn in self._pool:
            record = self._records.get(id(conn)) or self._remember(conn)
            if self._driver.is_alive(conn, record.state):
                alive.append(conn)
            else:
                self._lost(record, now)
                self._doomed.append(self._forget(conn))
        self._pool[:] = alive

    def _report_leaks(self, now: float) -> None:
        limit = self._options.leak_timeout
        if limit is None:
            return
        for key, conn in self._used.items():
            record = self._records.get(id(conn))
            if record is None or record.leak_reported or now - record.checked_out_at <= limit:
                continue
            record.leak_reported = True
            logger.warning(
                "%s: connection %r checked out %.1f s ago, longer than pool_leak_timeout=%g s;"
                " checked out at:\n%s",
                self._label,
                key,
                now - record.checked_out_at,
                limit,
                "".join(record.checkout_stack or ["(stack not captured)\n"]),
            )

    def _open_count(self) -> int:
        return len(self._pool) + len(self._used) + self._reserved + self._settling

    def _gauges(self) -> Dict[str, int]:
        values = (
            self.minconn,
            self.maxconn,
            self._open_count(),
            len(self._pool),
            len(self._waiters),
        )
        return dict(zip(GAUGE_KEYS, values))

    @property
    def _label(self) -> str:
        return f"pool {self.name!r}"

    # -- background keeper and fork --------------------------------------------------------

    def _start_keeper(self) -> None:
        self._keeper = _Keeper(self)
        self._keeper.start()

    def _maintain(self) -> None:
        """One keeper pass: drop dead and expired idle connections, report leaks, refill."""
        with self._lock:
            if self.closed:
                return
            now = time.monotonic()
            self._drop_dead_idle(now)
            self._expire_idle(now)
            self._report_leaks(now)
            missing = max(0, self.minconn - self._open_count())
            self._reserved += missing
        self._close_doomed()
        while missing:
            try:
                conn = self._open()
            except BaseException:
                with self._lock:
                    self._reserved -= missing
                    for _ in range(missing):
                        self._free_slot()
                raise
            missing -= 1
            with self._lock:
                self._reserved -= 1
                if not self.closed:
                    self._shelve(conn)
                    continue
                self._forget(conn)
            self._driver.dispose(conn)

    def _after_fork_in_child(self) -> None:
        """Forget what the parent owns, without closing it: closing would end its sessions."""
        self._lock = threading.RLock()
        self._books_changed = threading.Condition(self._lock)
        self._waiters.clear()
        self._inherited.update((id(conn), conn) for conn in self._used.values())
        self._pool.clear()
        self._used.clear()
        self._rused.clear()
        self._records.clear()
        self._doomed.clear()
        self._pending_keys.clear()
        self._reserved = self._settling = 0
        self._keeper = None
        if self._options.background and not self.closed:
            self._start_keeper()


class SimpleConnectionPool(AbstractConnectionPool, _stock.SimpleConnectionPool):  # type: ignore[misc]
    """A connection pool that can't be shared across different threads."""

    _allow_timeout = False

    getconn = AbstractConnectionPool._getconn
    putconn = AbstractConnectionPool._putconn
    closeall = AbstractConnectionPool._closeall


class ThreadedConnectionPool(AbstractConnectionPool, _stock.ThreadedConnectionPool):  # type: ignore[misc]
    """A connection pool that works with the threading module.

    The engine locks by itself, so ``getconn`` and ``closeall`` are the underscored methods
    (one call less on the hot path); a subclass that overrides an underscored method still
    has it called by the public one, as in psycopg2.pool (see ``__init_subclass__``).
    """

    def __init__(self, minconn: Any, maxconn: Any, *args: Any, **kwargs: Any) -> None:
        AbstractConnectionPool.__init__(self, minconn, maxconn, *args, **kwargs)

    getconn = AbstractConnectionPool._getconn
    closeall = AbstractConnectionPool._closeall

    def putconn(
        self, conn: Any = None, key: Optional[Hashable] = None, close: bool = False
    ) -> None:
        """Put away an unused connection."""
        self._putconn(conn, key, close)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for public, private in _PUBLIC_TO_PRIVATE:
            overridden = getattr(cls, private) is not getattr(AbstractConnectionPool, private)
            if overridden and getattr(cls, public) is getattr(ThreadedConnectionPool, public):
                setattr(cls, public, _delegate_to(private))


_PUBLIC_TO_PRIVATE = (("getconn", "_getconn"), ("closeall", "_closeall"))


def _delegate_to(private: str) -> Any:
    """A public method that calls the subclass's own ``private`` one, as stock's do."""

    def public(self: AbstractConnectionPool, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, private)(*args, **kwargs)

    public.__name__ = private.lstrip("_")
    return public


class _Keeper(threading.Thread):
    """The ``pool_background`` thread: refill to minconn, expire idle, report leaks."""

    INTERVAL = 1.0
    MAX_BACKOFF = 30.0

    def __init__(self, pool: AbstractConnectionPool) -> None:
        super().__init__(name=f"pgpool_compat-keeper-{pool.name}", daemon=True)
        self._pool_ref = weakref.ref(pool)
        self.stopping = threading.Event()
        self._failures = 0

    def stop(self) -> None:
        self.stopping.set()
        if self is not threading.current_thread():
            self.join(timeout=self.MAX_BACKOFF)

    def run(self) -> None:
        while not self.stopping.is_set():
            pool = self._pool_ref()
            if pool is None or pool.closed:
                return
            try:
                pool._maintain()
                self._failures = 0
            except Exception as error:
                self._failures += 1
                logger.info("%s: keeper could not refill: %s", pool._label, type(error).__name__)
            del pool  # let an abandoned pool be collected while this thread sleeps
            self.stopping.wait(self._pause())

    def _pause(self) -> float:
        if not self._failures:
            return self.INTERVAL
        backoff = min(self.MAX_BACKOFF, 0.1 * 2.0 ** float(self._failures))
        return float(backoff * random.uniform(0.5, 1.0))  # jitter: pools must not retry in step


def _sizes(minconn: Any, maxconn: Any) -> Tuple[int, int]:
    """psycopg2.pool's ``int()`` coercion, plus the validation it lacks."""
    sizes = []
    for name, value in (("minconn", minconn), ("maxconn", maxconn)):
        try:
            sizes.append(int(value))
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
    low, high = sizes
    if low < 0:
        raise ValueError(f"minconn must be 0 or more, got {low}")
    if high < 1:
        raise ValueError(f"maxconn must be 1 or more, got {high}")
    if high > MAX_CONNECTIONS:
        raise ValueError(f"maxconn must be at most {MAX_CONNECTIONS} (PostgreSQL's limit)")
    if low > high:
        raise ValueError(f"minconn ({low}) must not be greater than maxconn ({high})")
    return low, high


def _rollback_quietly(conn: Any) -> None:
    try:
        if not conn.closed:
            conn.rollback()
    except Exception as error:
        logger.info("rollback after an error failed: %s", type(error).__name__)


_live_pools: weakref.WeakSet[AbstractConnectionPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_live_pools):
        pool._after_fork_in_child()


def _stop_keepers_at_exit() -> None:
    for pool in list(_live_pools):
        keeper = pool._keeper
        if keeper is not None:
            keeper.stopping.set()


if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_stop_keepers_at_exit)
