"""Review tests for the pool engine: the paths that release the lock and take it again.

Each test forces one interleaving with callables that block on ``threading.Event`` (a
``pool_check``, ``pool_reset``, or a gated connect), so it is deterministic, not a stress run.
``Interrupt`` stands for KeyboardInterrupt (a BaseException, not an Exception) raised inside
the engine's I/O: the books must come out consistent from it too.

Some tests pin a subtle rule that holds (they can fail if it breaks); the others show a bug
(docs/review.md says which, the cause and the proposed fix).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import psycopg2
import pytest

import pgpool_compat
from pgpool_compat import PoolError, PoolTimeout
from pgpool_compat.factory import ConnectionPool

pytestmark = pytest.mark.timeout(60)

GATE = 5.0  # longest a gated callable blocks; every test releases its gates well before
JOIN = 5.0  # longest a helper thread may take to finish


class Interrupt(BaseException):
    """Like KeyboardInterrupt: not an Exception, so ``except Exception`` lets it through."""


class Call(threading.Thread):
    """Run ``fn()`` in a daemon thread; remember its result or error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as error:
            self.error = error

    def finished_within(self, seconds: float) -> bool:
        self.join(seconds)
        return not self.is_alive()


class Gate:
    """A pool's ``check`` / ``reset`` (or a factory's connect) that blocks until ``release``
    is set; ``entered`` is set once a call blocks. ``target`` (set it once the pool exists)
    limits the blocking to that one connection; ``calls`` counts the calls."""

    def __init__(self, *, selective: bool = False) -> None:
        self.release, self.entered = threading.Event(), threading.Event()
        self.selective = selective
        self.target: Any = None
        self.calls = 0

    def block(self, conn: Any = None) -> None:
        self.calls += 1
        if not self.selective or (self.target is not None and conn is self.target):
            self.entered.set()
            self.release.wait(GATE)

    def check(self, conn: Any) -> bool:
        self.block(conn)
        return True

    def reset(self, conn: Any) -> None:
        self.block(conn)


def interrupting_check() -> Tuple[threading.Event, Callable[[Any], bool]]:
    """A ``pool_check`` that passes, or raises ``Interrupt`` while the event is set."""
    interrupt = threading.Event()

    def check(conn: Any) -> bool:
        if interrupt.is_set():
            raise Interrupt()
        return True

    return interrupt, check


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def blocked_in_wait(pool: Any, requests: int) -> Callable[[], bool]:
    """True once ``requests`` getconn calls were counted: get_stats takes the engine lock, so a
    caller that counted itself and is still in getconn has released it, i.e. is waiting."""
    return lambda: pool.get_stats()["requests_num"] >= requests


def gate_connect(pool: Any) -> Gate:
    """Make the pool's next connects block until the gate is released (``calls`` counts
    them)."""
    gate = Gate()
    connect = pool._driver.connect

    def gated() -> Any:
        gate.block()
        return connect()

    pool._driver.connect = gated
    return gate


@pytest.fixture
def made() -> Any:
    """Pools (and loose connections) a test creates; closed afterwards whatever happened."""
    pools: List[Any] = []
    conns: List[Any] = []
    yield pools, conns
    for pool in pools:
        if not pool.closed:
            pool.closeall()
    for conn in conns:
        if not conn.closed:
            conn.close()


# -- BaseException inside I/O done with the lock released -----------------------------------


def test_reset_interrupted_by_a_base_exception_frees_the_slot(pg_dsn: str, made: Any) -> None:
    """BUG: _settle catches Exception only; the interrupted return stays counted in
    ``_settling`` for ever, so the pool is one slot short (here: full) from then on."""
    pools, conns = made
    interrupt_next = [True]

    def reset(conn: Any) -> None:
        if interrupt_next[0]:
            interrupt_next[0] = False
            raise Interrupt()

    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_reset=reset, pool_timeout=0.5)
    pools.append(pool)
    conn = pool.getconn()
    conns.append(conn)
    with pytest.raises(Interrupt):
        pool.putconn(conn)
    # The interrupted connection is gone or idle; either way the slot must be usable again.
    again = pool.getconn()
    assert again is not None
    assert pool.get_stats()["pool_size"] == 1


def test_check_interrupted_by_a_base_exception_loses_no_slot(pg_dsn: str, made: Any) -> None:
    """BUG: pool.check() moves the idle batch into ``_settling`` and a BaseException from the
    check leaves it there: the slot is lost and the idle connection is never closed."""
    pools, conns = made
    interrupt, check = interrupting_check()
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_check=check, pool_timeout=0.5)
    pools.append(pool)
    idle = pool._pool[0]
    conns.append(idle)
    interrupt.set()
    with pytest.raises(Interrupt):
        pool.check()
    interrupt.clear()
    conn = pool.getconn()  # got: PoolTimeout, the only slot is still "settling"
    assert conn is not None


def test_slow_check_interrupted_leaves_no_open_connection_outside_the_books(
    pg_dsn: str, made: Any
) -> None:
    """BUG: _take_idle pops the idle connection, runs the check unlocked, and a BaseException
    from it leaves the connection open but in no book: closeall() never closes it."""
    pools, conns = made
    interrupt, check = interrupting_check()
    pool = pgpool_compat.ThreadedConnectionPool(1, 2, pg_dsn, pool_check=check)
    pools.append(pool)
    idle = pool._pool[0]
    conns.append(idle)
    interrupt.set()
    with pytest.raises(Interrupt):
        pool.getconn()
    interrupt.clear()
    in_books = idle in pool._pool or any(c is idle for c in pool._used.values())
    pool.closeall()
    assert in_books or idle.closed, "connection neither in the books nor closed: leaked"
    assert idle.closed, "closeall() left a connection of the pool open"


@pytest.mark.parametrize("how", ["returned", "closed"])
def test_waiter_interrupted_while_sleeping_is_not_served_later(
    pg_dsn: str, made: Any, how: str
) -> None:
    """BUG: _await_turn has no handler around waiter.sleep(): a KeyboardInterrupt there leaves
    the waiter queued, and the next return (or freed slot) goes to that ghost for good."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    pools, conns = made
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_timeout=1.0)
    pools.append(pool)
    held = pool.getconn()
    conns.append(held)

    def on_signal(signum: int, frame: Any) -> None:
        raise Interrupt()

    previous = signal.signal(signal.SIGUSR1, on_signal)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(Interrupt):
            pool.getconn()  # waits (pool full), interrupted after 0.2 s
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert pool.get_stats()["requests_waiting"] == 0, "the interrupted caller is still queued"
    pool.putconn(held, close=(how == "closed"))
    conn = pool.getconn()  # got: PoolTimeout, the connection or slot went to the ghost
    conns.append(conn)
    assert not conn.closed


# -- waking callers blocked on _books_changed -------------------------------------------------


@pytest.mark.parametrize("close", [False, True], ids=["return", "close"])
def test_a_return_wakes_a_caller_waiting_for_a_check_to_finish(
    pg_dsn: str, made: Any, close: bool
) -> None:
    """BUG: without pool_timeout, a caller at maxconn while pool.check() holds the idle ones
    waits on _books_changed; a clean putconn (or a close freeing a slot) does not notify it,
    so it sleeps until check() ends although a connection (or slot) is free."""
    pools, conns = made
    gate = Gate(selective=True)
    pool = pgpool_compat.ThreadedConnectionPool(2, 2, pg_dsn, pool_check=gate.check)
    pools.append(pool)
    used = pool.getconn()
    conns.append(used)
    gate.target = pool._pool[0]
    checker = Call(pool.check)  # holds the other idle connection, blocked in the check
    try:
        assert gate.entered.wait(GATE)
        before = pool.get_stats()["requests_num"]
        caller = Call(pool.getconn)
        wait_for(blocked_in_wait(pool, before + 1))
        pool.putconn(used, close=close)
        served = caller.finished_within(1.5)
        check_running = not gate.release.is_set() and checker.is_alive()
    finally:
        gate.release.set()
        checker.join(JOIN)
        caller.join(JOIN)
    if caller.result is not None:
        conns.append(caller.result)
    assert served and check_running, "the caller stayed asleep with a connection free"
    assert caller.error is None


def test_closeall_wakes_a_caller_waiting_for_a_key_without_a_new_connect(
    pg_dsn: str, made: Any
) -> None:
    """BUG: _acquire_slow never looks at ``closed`` after a wait: a caller waiting for another
    caller's connect of the same key, woken after closeall(), opens a new server connection
    (or queues as a waiter on the closed pool) before failing."""
    pools, _conns = made
    pool = pgpool_compat.ThreadedConnectionPool(0, 2, pg_dsn)
    pools.append(pool)
    gate = gate_connect(pool)
    first = Call(lambda: pool.getconn("k"))
    try:
        assert gate.entered.wait(GATE)
        second = Call(lambda: pool.getconn("k"))
        wait_for(blocked_in_wait(pool, 2))
        pool.closeall()
    finally:
        gate.release.set()
        first.join(JOIN)
        second.join(JOIN)
    assert isinstance(first.error, PoolError) and "closed" in str(first.error)
    assert isinstance(second.error, PoolError) and "closed" in str(second.error)
    assert gate.calls == 1, f"{gate.calls - 1} server connection(s) opened after closeall()"


def test_pool_timeout_bounds_a_wait_for_another_callers_connect_of_the_key(
    pg_dsn: str, made: Any
) -> None:
    """BUG (minor): the pending-key wait in _acquire_slow is an unbounded Condition.wait(), so
    getconn(key) ignores pool_timeout while another caller's connect of that key hangs."""
    pools, conns = made
    pool = pgpool_compat.ThreadedConnectionPool(0, 2, pg_dsn, pool_timeout=0.3)
    pools.append(pool)
    gate = gate_connect(pool)
    first = Call(lambda: pool.getconn("k"))
    try:
        assert gate.entered.wait(GATE)
        second = Call(lambda: pool.getconn("k"))
        bounded = second.finished_within(1.5)
    finally:
        gate.release.set()
        first.join(JOIN)
        second.join(JOIN)
    for call in (first, second):
        if call.result is not None:
            conns.append(call.result)
    assert bounded, "getconn(key) waited past pool_timeout=0.3 for another caller's connect"
    assert isinstance(second.error, PoolTimeout)


def test_prefill_stops_connecting_once_the_pool_is_closed(pg_dsn: str, made: Any) -> None:
    """BUG: _refill's loop opens, then disposes, every missing connection after closeall()
    instead of stopping at the first one that finds the pool closed."""
    pools, conns = made
    gate = Gate()

    def factory() -> Any:
        gate.block()
        conn = psycopg2.connect(pg_dsn)
        conns.append(conn)
        return conn

    pool: ConnectionPool[Any] = ConnectionPool(factory, min_size=0, max_size=3, timeout=1.0)
    pools.append(pool)
    filler = Call(lambda: pool.prefill(3))
    try:
        assert gate.entered.wait(GATE)
        pool.close_all()
    finally:
        gate.release.set()
        filler.join(JOIN)
    assert not filler.is_alive()
    assert all(conn.closed for conn in conns)
    assert gate.calls == 1, f"{gate.calls - 1} connection(s) opened after close_all()"


# -- rules that hold: pinned so that they keep holding ---------------------------------------


def test_slow_check_runs_unlocked_and_its_connection_still_counts(pg_dsn: str, made: Any) -> None:
    """A check callable runs with the lock released (others get and put meanwhile), and the
    connection under check keeps its slot: at maxconn a newcomer cannot take it."""
    pools, conns = made
    gate = Gate(selective=True)
    pool = pgpool_compat.ThreadedConnectionPool(2, 2, pg_dsn, pool_check=gate.check)
    pools.append(pool)
    gate.target = pool._pool[-1]  # LIFO: the first getconn checks this one
    checking = Call(pool.getconn)
    try:
        assert gate.entered.wait(GATE)
        other = pool.getconn()  # the lock is free: the other idle connection is handed out
        conns.append(other)
        assert pool.get_stats()["pool_size"] == 2
        with pytest.raises(PoolError, match="exhausted"):
            pool.getconn()  # the slot under check is not free
        pool.putconn(other)
    finally:
        gate.release.set()
        checking.join(JOIN)
    assert checking.result is gate.target
    assert pool._pool == [other]


def test_closeall_during_a_slow_check_closes_it_and_fails_the_caller(
    pg_dsn: str, made: Any
) -> None:
    """A connection being checked when closeall() runs is closed, never handed out."""
    pools, conns = made
    gate = Gate()
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_check=gate.check)
    pools.append(pool)
    idle = pool._pool[0]
    conns.append(idle)
    checking = Call(pool.getconn)
    try:
        assert gate.entered.wait(GATE)
        pool.closeall()
    finally:
        gate.release.set()
        checking.join(JOIN)
    assert isinstance(checking.error, PoolError) and "closed" in str(checking.error)
    assert idle.closed


def test_closeall_during_a_reset_closes_the_connection_after_it(pg_dsn: str, made: Any) -> None:
    """A return being reset when closeall() runs is closed once the reset ends, not shelved."""
    pools, conns = made
    gate = Gate()
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_reset=gate.reset)
    pools.append(pool)
    conn = pool.getconn()
    conns.append(conn)
    returning = Call(lambda: pool.putconn(conn))
    try:
        assert gate.entered.wait(GATE)
        pool.closeall()
        assert not conn.closed  # not closed under the reset's feet
    finally:
        gate.release.set()
        returning.join(JOIN)
    assert returning.error is None
    assert conn.closed and conn not in pool._pool


def test_same_key_during_a_slow_check_gets_one_connection(pg_dsn: str, made: Any) -> None:
    """getconn(key) twice while the first is checking an idle connection: both callers get
    the same connection, and the extra one opened meanwhile goes idle, booked nowhere else."""
    pools, conns = made
    gate = Gate(selective=True)
    pool = pgpool_compat.ThreadedConnectionPool(1, 3, pg_dsn, pool_check=gate.check)
    pools.append(pool)
    gate.target = pool._pool[0]
    first = Call(lambda: pool.getconn("k"))
    try:
        assert gate.entered.wait(GATE)
        second = pool.getconn("k")  # no idle one: opens a new connection for "k"
        conns.append(second)
    finally:
        gate.release.set()
        first.join(JOIN)
    assert first.result is second
    assert pool._used == {"k": second}
    assert pool._pool == [gate.target]
    assert pool.get_stats()["pool_size"] == 2


@pytest.mark.parametrize("check", [None, "socket"])
def test_closeall_racing_a_wake_up_never_hands_out_a_closed_connection(
    pg_dsn: str, made: Any, check: Optional[str]
) -> None:
    """A caller sleeping on the books (no pool_timeout, a reset under way) is woken by a
    return, but closeall() takes the lock first and closes the returned connection, which
    stays in ``_pool`` (closeall keeps the books). The caller must get "pool is closed", not
    that closed connection (with pool_check=None nothing else would catch it; with the socket
    probe it is counted as a lost connection)."""
    pools, conns = made
    gate = Gate(selective=True)
    pool = pgpool_compat.ThreadedConnectionPool(
        2, 2, pg_dsn, pool_check=check, pool_reset=gate.reset
    )
    pools.append(pool)
    first, second = pool.getconn(), pool.getconn()
    conns.extend([first, second])
    gate.target = first
    returning = Call(lambda: pool.putconn(first))  # its reset blocks: one slot "settling"
    caller: Optional[Call] = None
    try:
        assert gate.entered.wait(GATE)
        before = pool.get_stats()["requests_num"]
        caller = Call(pool.getconn)
        wait_for(blocked_in_wait(pool, before + 1))
        with pool._lock:  # the caller, woken by the return, cannot run before closeall
            pool.putconn(second)
            pool.closeall()
    finally:
        gate.release.set()
        returning.join(JOIN)
        if caller is not None:
            caller.join(JOIN)
    assert caller is not None and not caller.is_alive()
    assert caller.result is None, "getconn() handed out a connection closed by closeall()"
    assert isinstance(caller.error, PoolError) and "closed" in str(caller.error)
    assert pool.get_stats()["connections_lost"] == 0, "closeall's own closing counted as lost"


def test_a_waiter_given_a_slot_just_before_closeall_does_not_connect(
    pg_dsn: str, made: Any
) -> None:
    """A waiter handed a freed slot, then closeall() before it runs: it must fail with "pool is
    closed" without opening a server connection that is closed again at once."""
    pools, conns = made
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_timeout=5.0)
    pools.append(pool)
    held = pool.getconn()
    conns.append(held)
    gate = gate_connect(pool)
    gate.release.set()  # connects go through; only counted
    waiter = Call(pool.getconn)
    try:
        wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
        with pool._lock:  # the waiter cannot run between the two calls
            pool.putconn(held, close=True)  # its slot goes to the waiter
            pool.closeall()
    finally:
        waiter.join(JOIN)
    assert isinstance(waiter.error, PoolError) and "closed" in str(waiter.error)
    assert gate.calls == 0, "a server connection was opened after closeall()"


def test_a_waiter_for_a_key_is_served_as_soon_as_that_key_is_booked(pg_dsn: str, made: Any) -> None:
    """Two callers wait for key "k" on a full pool; one return books "k" for the first. The
    second then asks for a key in use, which getconn(key) answers at once: it must not sleep
    until some other connection moves, nor time out with "k"'s connection booked."""
    pools, conns = made
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_timeout=1.0)
    pools.append(pool)
    held = pool.getconn()
    conns.append(held)
    first = Call(lambda: pool.getconn("k"))
    wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
    second = Call(lambda: pool.getconn("k"))
    wait_for(lambda: pool.get_stats()["requests_waiting"] == 2)
    pool.putconn(held)  # booked under "k" for the first caller
    assert first.finished_within(JOIN) and first.result is held
    assert second.finished_within(JOIN)
    assert second.error is None, f"second caller for 'k' got {second.error!r}"
    assert second.result is held


def test_check_never_hands_a_waiter_a_connection_past_its_lifetime(pg_dsn: str, made: Any) -> None:
    """pool.check() gives each connection that passes straight to the oldest waiter; one that
    outlived pool_max_lifetime while being checked must be closed instead (the waiter gets a
    new one): "never hand out a connection older than its lifetime"."""
    pools, conns = made
    gate = Gate()
    lifetime = 0.3

    pool = pgpool_compat.ThreadedConnectionPool(
        1, 1, pg_dsn, pool_check=gate.check, pool_max_lifetime=lifetime, pool_timeout=3.0
    )
    pools.append(pool)
    old = pool._pool[0]
    conns.append(old)
    checker = Call(pool.check)
    waiter: Optional[Call] = None
    try:
        assert gate.entered.wait(GATE)
        waiter = Call(pool.getconn)  # full (the check holds the only slot): queued
        wait_for(lambda: pool.get_stats()["requests_waiting"] == 1)
        time.sleep(lifetime + 0.05)  # the connection under check is now past its lifetime
    finally:
        gate.release.set()
        checker.join(JOIN)
        if waiter is not None:
            waiter.join(JOIN)
    assert waiter is not None and waiter.error is None, waiter and waiter.error
    conns.append(waiter.result)
    assert waiter.result is not old, "handed out a connection past pool_max_lifetime"
