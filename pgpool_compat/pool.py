"""The psycopg2.pool contract, on an engine that waits, checks, resets and survives faults.

psycopg2.pool's books stay the source of truth: ``_pool`` (idle connections, newest last),
``_used`` (key -> connection), ``_rused`` (id(connection) -> key) and ``_keys``. Subclasses
in the wild read and write them, and every valid call sequence gives the same results as
psycopg2.pool. The engine adds, beside them, the slots reserved by callers doing I/O with
no lock held, a queue of waiters, per-connection records and counters.
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
from typing import (
    Any,
    Dict,
    Hashable,
    Iterable,
    Iterator,
    List,
    Optional,
    Tuple,
    TypeVar,
)

import psycopg2.pool as _stock

from .errors import PoolError, PoolTimeout
from .health import Driver, Psycopg2Driver
from .options import PoolOptions, split_options
from .records import ConnRecord
from .stats import PoolStats
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

#: PostgreSQL cannot serve more connections than this (MAX_BACKENDS).
MAX_CONNECTIONS = 0x3FFFF

#: How often lazy housekeeping (idle expiry, leak scan) may run on the hot paths.
HOUSEKEEPING_INTERVAL = 1.0


class AbstractConnectionPool(_stock.AbstractConnectionPool):  # type: ignore[misc]
    """Generic key-based pooling code, psycopg2.pool's contract plus opt-in behaviour.

    ``pool_*`` keywords configure the pool (see ``PoolOptions``); every other argument
    goes to ``psycopg2.connect`` unchanged.
    """

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
        self._lock = threading.RLock()  # reentrant: subclasses may call _getconn holding it
        self._books_changed = threading.Condition(self._lock)
        self._waiters = WaitQueue()
        self._records: Dict[int, ConnRecord] = {}
        self._reserved = 0  # slots held by callers opening or checking a connection
        self._settling = 0  # connections being reset on their way back to idle
        self._pending_keys: Dict[Hashable, int] = {}  # explicit keys whose connect is in flight
        self._inherited: Dict[int, Any] = {}  # borrowed when the process forked: drop on return
        self._legacy_connect = type(self)._connect is not AbstractConnectionPool._connect
        self._idle_cap = self.maxconn if options.max_idle is not None else self.minconn
        self._suspect_before = -1.0  # ping connections created before a dead one was found
        self._suspect_marked_at = -1.0
        self._housekeeping_due = time.monotonic() + HOUSEKEEPING_INTERVAL
        self._needs_housekeeping = (
            options.max_idle is not None
            or options.max_lifetime is not None
            or options.leak_timeout is not None
        )
        self._keeper: Optional[_Keeper] = None

        try:
            for _ in range(self.minconn):
                started = time.monotonic()
                self._connect()
                self._stats.connections_num += 1
                self._stats.connections_ms += (time.monotonic() - started) * 1000.0
        except BaseException:
            self._dispose_all(list(self._pool))
            raise
        _live_pools.add(self)
        if options.background:
            self._start_keeper()

    # -- overridable hooks -------------------------------------------------------------------

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

    # -- public-contract operations ----------------------------------------------------------

    def _getconn(self, key: Optional[Hashable] = None) -> Any:
        """Get a free connection and assign it to 'key' if not None."""
        doomed: List[Any] = []
        waiter: Optional[Waiter] = None
        try:
            with self._lock:
                if self.closed:
                    self._stats.requests_errors += 1
                    raise PoolError(CLOSED)
                self._stats.requests_num += 1
                if key is None:
                    key = self._getkey()
                if self._needs_housekeeping:
                    self._lazy_housekeeping(doomed)
                while True:
                    conn = self._used.get(key)
                    if conn is not None:
                        return conn
                    conn = self._take_idle(key, doomed)
                    if conn is not None:
                        return conn
                    if key in self._pending_keys:
                        self._books_changed.wait()  # another caller is connecting this key
                        continue
                    if len(self._used) + self._reserved + self._settling < self.maxconn:
                        self._reserve(key)
                        break
                    if self._options.timeout is None:
                        if self._settling:
                            self._books_changed.wait()  # a return is being reset: wait for it
                            continue
                        self._stats.requests_errors += 1
                        raise PoolError(EXHAUSTED)
                    waiter = self._waiters.enqueue(key)
                    self._stats.requests_queued += 1
                    break
        finally:
            self._dispose_all(doomed)
        if waiter is not None:
            return self._await_turn(waiter)
        return self._open_reserved(key)

    def _putconn(self, conn: Any, key: Optional[Hashable] = None, close: bool = False) -> None:
        """Put away a connection."""
        doomed: List[Any] = []
        try:
            with self._lock:
                if self.closed:
                    raise PoolError(CLOSED)
                if conn is None and key is not None:
                    conn = self._used.get(key)
                if key is None:
                    key = self._rused.get(id(conn))
                    if key is None:
                        if self._inherited.pop(id(conn), None) is not None:
                            return  # borrowed before a fork: dropped, never closed here
                        raise PoolError(UNKEYED)
                elif conn is None or self._used.get(key) is not conn:
                    raise PoolError(
                        f"trying to put a connection under key {key!r}, which it was not "
                        "checked out with; nothing was changed"
                    )
                now = time.monotonic()
                record = self._records.get(id(conn))
                if record is not None:
                    self._stats.usage_ms += record.mark_returned(now)
                del self._used[key]
                del self._rused[id(conn)]
                keep = (
                    not close
                    and (len(self._pool) + self._settling < self._idle_cap or len(self._waiters))
                    and not (record is not None and record.expired(now))
                )
                state = self._driver.return_state(conn) if keep else None
                if not keep:
                    doomed.append(self._forget(conn))
                    self._free_slot()
                elif state is None:
                    self._stats.returns_bad += 1
                    doomed.append(self._forget(conn))
                    self._free_slot()
                elif not state:
                    self._shelve(conn)
                    return
                else:
                    self._settling += 1
                if self._needs_housekeeping:
                    self._lazy_housekeeping(doomed)
        finally:
            self._dispose_all(doomed)
        if state:
            self._settle(conn)

    def _closeall(self) -> None:
        """Close all connections, borrowed ones too; the books stay as they were."""
        with self._lock:
            if self.closed:
                raise PoolError(CLOSED)
            self.closed = True
            victims = self._pool + list(self._used.values())
            self._waiters.fail_all(PoolError(CLOSED))
            self._books_changed.notify_all()
            keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.stop()
        self._dispose_all(victims)
        logger.debug("%s closed", self._label)

    # -- additions: context managers, stats, checks ------------------------------------------

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
            self._return_quietly(conn, key)

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
        """Probe every idle connection now, drop the dead ones; return how many were dropped."""
        with self._lock:
            if self.closed:
                raise PoolError(CLOSED)
            batch, self._pool = self._pool, []
            self._settling += len(batch)
        verdicts = [self._passes_check(conn, force_ping=True) for conn in batch]
        doomed: List[Any] = []
        with self._lock:
            self._settling -= len(batch)
            for conn, alive in zip(batch, verdicts):
                if self.closed or not alive:
                    doomed.append(self._forget(conn))
                    self._free_slot()
                else:
                    self._shelve(conn)
            self._stats.connections_lost += verdicts.count(False)
            self._books_changed.notify_all()
        self._dispose_all(doomed)
        return verdicts.count(False)

    @property
    def name(self) -> str:
        return self._options.name or f"pool-{id(self):x}"

    def __repr__(self) -> str:
        # Never the DSN: it may carry a password.
        state = "closed" if self.closed else f"idle={len(self._pool)} used={len(self._used)}"
        return (
            f"<{type(self).__name__} {self.name!r} min={self.minconn} max={self.maxconn} "
            f"{state}>"
        )

    # -- checkout internals (called with the lock held unless said otherwise) ----------------

    def _take_idle(self, key: Hashable, doomed: List[Any]) -> Any:
        """Book the first idle connection that passes the cheap checks, or return None."""
        options = self._options
        now = time.monotonic()
        while self._pool:
            conn = self._pool.pop() if options.lifo else self._pool.pop(0)
            record = self._records.get(id(conn)) or self._remember(conn)
            if record.expired(now) or self._idle_too_long(record, now, self._open_count() + 1):
                doomed.append(self._forget(conn))
                continue
            if options.check is not None and not self._driver.is_alive(conn):
                self._lost(record, now)
                doomed.append(self._forget(conn))
                continue
            if self._needs_slow_check(record, now):
                # A ping or a user check does I/O: do it with the lock released.
                self._reserved += 1
                self._lock.release()
                try:
                    alive = self._passes_check(conn, force_ping=True)
                finally:
                    self._lock.acquire()
                    self._reserved -= 1
                if not alive:
                    self._lost(record, now)
                    doomed.append(self._forget(conn))
                    continue
                if self.closed:
                    doomed.append(self._forget(conn))
                    raise PoolError(CLOSED)
                if key in self._used:  # a caller with the same key won meanwhile
                    self._shelve(conn)
                    return self._used[key]
            self._book(conn, key, record, now)
            return conn
        return None

    def _needs_slow_check(self, record: ConnRecord, now: float) -> bool:
        check = self._options.check
        if check == "ping":
            return (
                now - record.idle_since > self._options.ping_after
                or (
                    record.created_at <= self._suspect_before
                    and record.last_good < self._suspect_marked_at
                )
            )
        return callable(check)

    def _passes_check(self, conn: Any, force_ping: bool) -> bool:
        """Run the configured check, doing I/O; call with the lock released."""
        check = self._options.check
        try:
            if callable(check):
                return bool(check(conn))
            if check == "ping" and force_ping:
                return self._driver.ping(conn, self._options.check_timeout)
            return self._driver.is_alive(conn)  # check() probes even when pool_check=None
        except Exception as error:
            logger.info("%s: check failed: %s", self._label, type(error).__name__)
            return False

    def _lost(self, record: ConnRecord, now: float) -> None:
        self._stats.connections_lost += 1
        self._suspect_before = max(self._suspect_before, record.created_at)
        self._suspect_marked_at = now
        logger.info("%s: dropped a dead connection", self._label)

    def _idle_too_long(self, record: ConnRecord, now: float, open_count: int) -> bool:
        max_idle = self._options.max_idle
        return (
            max_idle is not None
            and now - record.idle_since > max_idle
            and open_count > self.minconn  # never close below minconn
        )

    def _book(self, conn: Any, key: Hashable, record: ConnRecord, now: float) -> None:
        self._used[key] = conn
        self._rused[id(conn)] = key
        record.mark_checked_out(now, self._options.leak_timeout is not None)

    def _reserve(self, key: Hashable) -> None:
        self._reserved += 1
        self._pending_keys[key] = self._pending_keys.get(key, 0) + 1

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
            if not self.closed and key not in self._used:
                self._book(conn, key, self._records[id(conn)], time.monotonic())
                return conn
            winner = self._used.get(key)
            if winner is not None and not self.closed:
                self._shelve(conn)  # another caller got this key first: keep ours for later
                return winner
            doomed = self._forget(conn)
            self._free_slot()
        self._driver.dispose(doomed)
        raise PoolError(CLOSED)

    def _unreserve(self, key: Hashable) -> None:
        self._reserved -= 1
        left = self._pending_keys[key] - 1
        if left:
            self._pending_keys[key] = left
        else:
            del self._pending_keys[key]
        self._books_changed.notify_all()

    def _open(self) -> Any:
        """Open and prepare a new connection outside the lock; the slot is already reserved."""
        started = time.monotonic()
        try:
            if self._legacy_connect:
                conn = self._open_through_override()
            else:
                conn = self._driver.connect()
                try:
                    self._remember(conn)
                except BaseException:
                    self._driver.dispose(conn)
                    raise
        except BaseException as error:
            with self._lock:
                self._stats.connections_errors += 1
            logger.warning("%s: connection failed: %s", self._label, type(error).__name__)
            raise
        with self._lock:
            self._stats.connections_num += 1
            self._stats.connections_ms += (time.monotonic() - started) * 1000.0
        logger.debug("%s: opened a connection", self._label)
        return conn

    def _open_through_override(self) -> Any:
        """Call a subclass's ``_connect`` under the lock, as psycopg2.pool does, and unbook it.

        An overriding ``_connect`` does its own bookkeeping on the shared dicts, so it runs
        under the lock; we then take the new connection back out of ``_pool``.
        """
        with self._lock:
            conn = self._connect()
            if conn in self._pool:
                self._pool.remove(conn)
            if id(conn) not in self._records:
                self._remember(conn)
        return conn

    def _remember(self, conn: Any) -> ConnRecord:
        """Prepare a connection the pool has not seen and start its record."""
        defaults = self._driver.prepare(conn)
        record = ConnRecord(conn, defaults, time.monotonic(), self._options.max_lifetime)
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
            if not woken and not waiter.served:
                self._waiters.discard(waiter)
                waited = time.monotonic() - waiter.enqueued_at
                self._stats.requests_wait_ms += waited * 1000.0
                self._stats.requests_errors += 1
                logger.info("%s: checkout timed out after %.3f s", self._label, waited)
                raise PoolTimeout(
                    f"{EXHAUSTED}: no connection free after waiting {waited:.3f} s "
                    f"(pool_timeout={timeout:g}, maxconn={self.maxconn}, "
                    f"{len(self._waiters) + 1} waiting)"
                )
                # else: served between the timeout and taking the lock; use what it got
            self._stats.requests_wait_ms += (time.monotonic() - waiter.enqueued_at) * 1000.0
            if waiter.error is not None:
                self._stats.requests_errors += 1
                raise waiter.error
            if waiter.conn is not None:
                return waiter.conn
        return self._open_reserved(waiter.key)

    # -- return internals --------------------------------------------------------------------

    def _settle(self, conn: Any) -> None:
        """Reset a returned connection with the lock released, then shelve or drop it."""
        record = self._records.get(id(conn))
        try:
            self._driver.reset(conn, record.defaults if record is not None else None)
            failure: Optional[BaseException] = None
        except Exception as error:
            failure = error
        with self._lock:
            self._settling -= 1
            self._books_changed.notify_all()
            if failure is None and not self.closed:
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
        waiter = self._waiters.pop_oldest()
        if waiter is None:
            self._pool.append(conn)
            return
        record = self._records.get(id(conn)) or self._remember(conn)
        self._book(conn, waiter.key, record, time.monotonic())
        waiter.conn = conn
        waiter.wake()

    def _free_slot(self) -> None:
        """A connection is gone: give its slot to the oldest waiter, who will connect."""
        if self.closed:
            return
        waiter = self._waiters.pop_oldest()
        if waiter is not None:
            self._reserve(waiter.key)
            waiter.slot = True
            waiter.wake()

    def _return_quietly(self, conn: Any, key: Optional[Hashable]) -> None:
        try:
            self.putconn(conn, key)
        except PoolError:
            if not self.closed:
                raise  # a closed pool already closed the connection; anything else is a bug

    # -- housekeeping ------------------------------------------------------------------------

    def _lazy_housekeeping(self, doomed: List[Any]) -> None:
        now = time.monotonic()
        if now >= self._housekeeping_due:
            self._housekeeping_due = now + HOUSEKEEPING_INTERVAL
            self._expire_idle(now, doomed)
            self._report_leaks(now)

    def _expire_idle(self, now: float, doomed: List[Any]) -> None:
        """Drop idle connections past their lifetime or idle time (lock held)."""
        open_count = self._open_count()
        keep: List[Any] = []
        for conn in self._pool:  # oldest idle first: those are the ones to close
            record = self._records.get(id(conn))
            if record is not None and (
                record.expired(now) or self._idle_too_long(record, now, open_count)
            ):
                doomed.append(self._forget(conn))
                open_count -= 1
            else:
                keep.append(conn)
        self._pool[:] = keep

    def _report_leaks(self, now: float) -> None:
        limit = self._options.leak_timeout
        if limit is None:
            return
        for key, conn in self._used.items():
            record = self._records.get(id(conn))
            if record is None or record.leak_reported or now - record.checked_out_at <= limit:
                continue
            record.leak_reported = True
            stack = "".join(record.checkout_stack or ["(stack not captured)\n"])
            logger.warning(
                "%s: connection %r checked out %.1f s ago, longer than pool_leak_timeout=%g s; "
                "checked out at:\n%s",
                self._label,
                key,
                now - record.checked_out_at,
                limit,
                stack,
            )

    def _open_count(self) -> int:
        return len(self._pool) + len(self._used) + self._reserved + self._settling

    def _gauges(self) -> Dict[str, int]:
        return {
            "pool_min": self.minconn,
            "pool_max": self.maxconn,
            "pool_size": self._open_count(),
            "pool_available": len(self._pool),
            "requests_waiting": len(self._waiters),
        }

    @property
    def _label(self) -> str:
        return f"pool {self.name!r}"

    def _dispose_all(self, conns: Iterable[Any]) -> None:
        for conn in conns:
            self._driver.dispose(conn)

    # -- background keeper and fork ----------------------------------------------------------

    def _start_keeper(self) -> None:
        self._keeper = _Keeper(self)
        self._keeper.start()

    def _maintain(self) -> None:
        """One keeper pass: expire idle, report leaks, refill up to ``minconn``."""
        doomed: List[Any] = []
        with self._lock:
            if self.closed:
                return
            now = time.monotonic()
            self._expire_idle(now, doomed)
            self._report_leaks(now)
            missing = self.minconn - self._open_count()
            self._reserved += max(0, missing)
        self._dispose_all(doomed)
        while missing > 0:
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
    """A connection pool that works with the threading module."""

    def __init__(self, minconn: Any, maxconn: Any, *args: Any, **kwargs: Any) -> None:
        AbstractConnectionPool.__init__(self, minconn, maxconn, *args, **kwargs)

    def getconn(self, key: Optional[Hashable] = None) -> Any:
        """Get a free connection and assign it to 'key' if not None."""
        return self._getconn(key)

    def putconn(
        self, conn: Any = None, key: Optional[Hashable] = None, close: bool = False
    ) -> None:
        """Put away an unused connection."""
        self._putconn(conn, key, close)

    def closeall(self) -> None:
        """Close all connections (even the one currently in use.)"""
        self._closeall()


class _Keeper(threading.Thread):
    """The ``pool_background`` thread: refill to ``minconn``, expire idle, report leaks."""

    INTERVAL = 1.0
    MAX_BACKOFF = 30.0

    def __init__(self, pool: AbstractConnectionPool) -> None:
        super().__init__(name=f"pgpool_compat-keeper-{pool.name}", daemon=True)
        self._pool_ref = weakref.ref(pool)
        self._stopping = threading.Event()
        self._failures = 0

    def stop(self) -> None:
        self._stopping.set()
        if self is not threading.current_thread():
            self.join(timeout=self.MAX_BACKOFF)

    def run(self) -> None:
        while not self._stopping.is_set():
            pool = self._pool_ref()
            if pool is None or pool.closed:
                return
            try:
                pool._maintain()
                self._failures = 0
            except Exception as error:
                self._failures += 1
                logger.info("%s: keeper could not refill: %s", pool._label, type(error).__name__)
            del pool  # let an abandoned pool be collected while we sleep
            self._stopping.wait(self._pause())

    def _pause(self) -> float:
        if not self._failures:
            return self.INTERVAL
        backoff = min(self.MAX_BACKOFF, 0.1 * 2.0 ** float(self._failures))
        return float(backoff * random.uniform(0.5, 1.0))  # jitter: pools must not reconnect in step


def _sizes(minconn: Any, maxconn: Any) -> Tuple[int, int]:
    """psycopg2.pool's ``int()`` coercion, plus the validation it lacks."""
    sizes = []
    for name, value in (("minconn", minconn), ("maxconn", maxconn)):
        try:
            sizes.append(int(value))
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
    low, high = sizes
    if high > MAX_CONNECTIONS:
        raise ValueError(
            f"maxconn must be at most {MAX_CONNECTIONS} (PostgreSQL's own limit), got {high}"
        )
    if low < 0:
        raise ValueError(f"minconn must be 0 or more, got {low}")
    if high < 1:
        raise ValueError(f"maxconn must be 1 or more, got {high}")
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
            keeper._stopping.set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

atexit.register(_stop_keepers_at_exit)
