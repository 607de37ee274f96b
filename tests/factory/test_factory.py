"""ConnectionPool: the ThreadedConnectionPool engine pooling whatever a factory makes.

Fake factories drive the rules (timeouts, fairness, lifetimes, idle expiry, checks, reset);
psycopg2 as the factory proves it against the real test server. Every thread is joined
with a bound, every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, List, Optional

import psycopg2
import psycopg2.pool
import pytest

from pgpool_compat.aio import AsyncConnectionPool
from pgpool_compat.engine.stats import COUNTER_KEYS, GAUGE_KEYS
from pgpool_compat.engine.threaded import ThreadedRunner
from pgpool_compat.errors import PoolError, PoolTimeout, PoolTimeoutError
from pgpool_compat.factory import ConnectionPool, FactoryDriver
from tests.helpers import (
    AWKWARD_CONNECTION_KINDS,
    AWKWARD_POOL_OPTIONS,
    backend_pids,
    recording_factory,
    terminate_backends,
)

pytestmark = pytest.mark.timeout(30)


class FakeConn:
    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"FakeConn({self.number})"


class Factory:
    """Makes FakeConns; can fail the next connects or hold them at a gate."""

    def __init__(self) -> None:
        self.made: List[FakeConn] = []
        self.failures = 0
        self.gate: Optional[threading.Event] = None
        self._lock = threading.Lock()

    def __call__(self) -> FakeConn:
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        with self._lock:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("server said no")
            conn = FakeConn(len(self.made))
            self.made.append(conn)
            return conn

    def open_conns(self) -> List[FakeConn]:
        return [conn for conn in self.made if not conn.closed]


def start_thread(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def join_all(threads: List[threading.Thread], bound: float = 10.0) -> None:
    deadline = time.monotonic() + bound
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), "a thread is stuck"


def wait_until(condition: Callable[[], bool], bound: float = 5.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.002)


# -- the engine, reused -------------------------------------------------------------------------


def test_it_is_the_threaded_runner_with_a_factory_driver_not_a_psycopg2_pool() -> None:
    factory = Factory()
    pool = ConnectionPool(factory, min_size=2, max_size=4)
    try:
        assert not isinstance(pool, psycopg2.pool.AbstractConnectionPool)
        assert isinstance(pool._runner, ThreadedRunner)
        assert isinstance(pool._runner.driver, FactoryDriver)
        # One vocabulary: none of psycopg2.pool's names.
        for name in ("getconn", "putconn", "closeall", "minconn", "maxconn"):
            assert not hasattr(pool, name)
        assert (pool.pool_size, pool.idle_count) == (2, 2)
        assert len(factory.made) == 2
        conn = pool.acquire()
        assert conn in factory.made and pool.idle_count == 1
        pool.release(conn)
        with pool.connection() as again:
            assert again is conn  # LIFO by default
    finally:
        pool.close_all()
    assert all(conn.closed for conn in factory.made)
    assert pool.pool_size == 0
    pool.close_all()  # idempotent


def test_settings_are_validated_with_their_own_names() -> None:
    with pytest.raises(ValueError, match="max_size"):
        ConnectionPool(Factory(), min_size=3, max_size=2)
    with pytest.raises(ValueError, match=r"^timeout"):
        ConnectionPool(Factory(), timeout=-1)
    with pytest.raises(TypeError, match="factory"):
        ConnectionPool(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="check"):
        ConnectionPool(Factory(), check="ping")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_idle"):
        ConnectionPool(Factory(), max_idle=0)
    with pytest.raises(TypeError, match=r"^lifo"):
        ConnectionPool(Factory(), lifo="yes")  # type: ignore[arg-type]


def test_stats_keys_are_the_engine_ones() -> None:
    with ConnectionPool(Factory(), min_size=1, max_size=2) as pool:
        with pool.connection():
            pass
        stats = pool.get_stats()
    assert list(stats) == list(GAUGE_KEYS) + list(COUNTER_KEYS)
    assert stats["requests_num"] == 1 and stats["connections_num"] == 1


def test_connection_block_neither_commits_nor_fails_after_close() -> None:
    pool = ConnectionPool(Factory(), min_size=1, max_size=1)
    with pool.connection() as conn:  # a FakeConn has no commit(): the block must not call it
        pool.close_all()
    assert conn.closed


# -- waiting ----------------------------------------------------------------------------------


def test_timeout_raises_pool_timeout_error() -> None:
    with ConnectionPool(Factory(), min_size=1, max_size=1, timeout=0.2) as pool:
        held = pool.acquire()
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError) as caught:
            pool.acquire()
        assert 0.19 <= time.monotonic() - started < 2.0
        assert PoolTimeoutError is PoolTimeout and isinstance(caught.value, PoolError)
        assert str(caught.value).startswith("connection pool exhausted")
        pool.release(held)
        assert pool.acquire() is held


def test_timeout_zero_fails_at_once_and_none_waits() -> None:
    with ConnectionPool(Factory(), min_size=1, max_size=1, timeout=0) as pool:
        held = pool.acquire()
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError):
            pool.acquire()
        assert time.monotonic() - started < 0.5
        pool.release(held)
    with ConnectionPool(Factory(), min_size=1, max_size=1, timeout=None) as pool:
        held = pool.acquire()
        got: List[Any] = []
        thread = start_thread(lambda: got.append(pool.acquire()))
        time.sleep(0.3)
        assert got == [] and thread.is_alive()
        pool.release(held)
        join_all([thread])
        assert got == [held]


@pytest.mark.parametrize("timeout", [0, 0.2])
def test_timeout_holds_while_another_thread_resets_a_return(timeout: float) -> None:
    """A return inside a slow user ``reset`` made ``acquire()`` wait ``check_timeout``
    (5 s, not even a keyword of this pool) past its timeout, ``timeout=0`` included."""
    resetting, finish = threading.Event(), threading.Event()

    def slow_reset(conn: FakeConn) -> None:
        resetting.set()
        assert finish.wait(10)

    with ConnectionPool(
        Factory(), min_size=0, max_size=1, timeout=timeout, reset=slow_reset
    ) as pool:
        held = pool.acquire()
        returning = start_thread(lambda: pool.release(held))
        try:
            assert resetting.wait(5)
            started = time.monotonic()
            with pytest.raises(PoolTimeoutError):
                pool.acquire()
            assert time.monotonic() - started < timeout + 1.0
        finally:
            finish.set()
            join_all([returning])
        assert pool.acquire() is held


def test_an_argument_to_acquire_is_a_timeout_never_a_key_past_max_size() -> None:
    """psycopg_pool's ``getconn(timeout)`` habit: ``acquire(5)`` became a sub-pool key with
    a max_size of its own (a connection past ``max_size`` at every call)."""
    factory = Factory()
    with ConnectionPool(factory, min_size=0, max_size=1, timeout=10) as pool:
        held = pool.acquire(5)
        for call in (lambda: pool.acquire(0.1), lambda: ConnectionPool.acquire(pool, 0.1)):
            started = time.monotonic()
            with pytest.raises(PoolTimeoutError, match=r"timeout=0\.1\b"):
                call()
            assert 0.09 <= time.monotonic() - started < 2.0  # its own timeout, not the pool's
        with pytest.raises(PoolTimeoutError):
            pool.acquire(timeout=0)
        with pytest.raises(TypeError):
            pool.acquire(key="other")  # type: ignore[call-arg]
        assert (pool.pool_size, len(factory.made)) == (1, 1)
        pool.release(held)
        assert pool.acquire(None) is held  # None: as long as it takes (nothing to wait for)


@pytest.mark.parametrize(
    "timeout, error",
    [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
     (1e12, ValueError), ("0.2", TypeError), (True, TypeError)],
)  # fmt: skip
def test_a_bad_timeout_to_acquire_is_refused_at_once(timeout: Any, error: type) -> None:
    # As the constructor refuses it, an idle connection there or not (it overflowed the
    # lock's timeout, waited for ever, or failed in arithmetic).
    with ConnectionPool(Factory(), min_size=1, max_size=1, timeout=10) as pool:
        with pytest.raises(error, match="timeout must be"):
            pool.acquire(timeout)
        held = pool.acquire()
        with pytest.raises(error, match="timeout must be"):
            pool.acquire(timeout)
        pool.release(held)
        assert pool.get_stats()["requests_waiting"] == 0 and pool.idle_count == 1


def test_waiters_are_served_in_arrival_order() -> None:
    order: List[int] = []
    with ConnectionPool(Factory(), min_size=1, max_size=1, timeout=10) as pool:
        held = pool.acquire()

        def waiter(number: int) -> None:
            with pool.connection():
                order.append(number)

        threads = []
        for number in range(6):
            threads.append(start_thread(lambda n=number: waiter(n)))
            wait_until(lambda n=number: pool.get_stats()["requests_waiting"] == n + 1)
        pool.release(held)
        join_all(threads)
    assert order == list(range(6))


def test_a_freed_slot_goes_to_the_oldest_waiter() -> None:
    factory = Factory()
    with ConnectionPool(factory, min_size=1, max_size=1, max_lifetime=0.1, timeout=5) as pool:
        held = pool.acquire()
        got: List[Any] = []
        first = start_thread(lambda: got.append(pool.acquire()))
        wait_until(lambda: pool.get_stats()["requests_waiting"] == 1)
        time.sleep(0.12)
        pool.release(held)  # past its lifetime: closed, and the slot handed on
        join_all([first])
        assert held.closed and got == [factory.made[1]]
        pool.release(got[0])


def test_many_threads_never_share_a_connection_nor_exceed_max_size() -> None:
    factory = Factory()
    holders: dict = {}
    guard = threading.Lock()
    peak = {"now": 0, "max": 0}
    errors: List[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(40):
                with pool.connection() as conn:
                    with guard:
                        assert id(conn) not in holders
                        holders[id(conn)] = threading.get_ident()
                        peak["now"] += 1
                        peak["max"] = max(peak["max"], peak["now"])
                    time.sleep(0.0005)
                    with guard:
                        del holders[id(conn)]
                        peak["now"] -= 1
        except BaseException as error:  # surfaced below: a thread must not fail silently
            errors.append(error)

    with ConnectionPool(factory, min_size=1, max_size=3, timeout=10) as pool:
        join_all([start_thread(worker) for _ in range(8)], bound=20)
        assert errors == []
        assert peak["max"] <= 3 and len(factory.made) <= 3
        assert pool.pool_size == pool.idle_count == len(factory.open_conns())


# -- lifetimes, idle, checks, reset, release ----------------------------------------------------


def test_lifetime_expires_and_is_jittered() -> None:
    factory = Factory()
    with ConnectionPool(factory, min_size=1, max_size=1, max_lifetime=0.1) as pool:
        first = pool.acquire()
        pool.release(first)
        time.sleep(0.12)
        second = pool.acquire()
        assert first.closed and second is factory.made[1]
        pool.release(second)
    with ConnectionPool(Factory(), min_size=40, max_size=40, max_lifetime=100) as pool:
        # White-box: the engine's records hold the deadlines the jitter is about.
        lifetimes = [rec.expires_at - rec.created_at for rec in pool._runner.core.entries.values()]
    assert len(lifetimes) == 40
    assert all(90.0 <= lifetime <= 100.0 for lifetime in lifetimes)
    assert len(set(lifetimes)) > 30


def test_returned_connections_stay_up_to_max_size_and_max_idle_shrinks_to_min() -> None:
    factory = Factory()
    with ConnectionPool(factory, min_size=1, max_size=3, max_idle=0.1) as pool:
        conns = [pool.acquire() for _ in range(3)]
        for conn in conns:
            pool.release(conn)
        assert pool.idle_count == 3
        time.sleep(0.15)
        with pool.connection():
            assert pool.pool_size == 1
        assert sum(conn.closed for conn in conns) == 2
    # Without max_idle nothing is closed for idleness: a factory pool does not churn.
    with ConnectionPool(factory, min_size=1, max_size=3) as pool:
        conns = [pool.acquire() for _ in range(3)]
        for conn in conns:
            pool.release(conn)
        assert pool.idle_count == 3 and not any(conn.closed for conn in conns)


def test_failed_checks_discard_and_try_the_next() -> None:
    factory = Factory()
    dead = {0, 1}

    def check(conn: FakeConn) -> bool:
        if conn.number == 1:
            raise OSError("probe blew up")  # an exception counts as a failure
        return conn.number not in dead

    with ConnectionPool(factory, min_size=3, max_size=3, check=check, lifo=False) as pool:
        conn = pool.acquire()
        assert conn is factory.made[2]
        assert factory.made[0].closed and factory.made[1].closed
        assert pool.get_stats()["connections_lost"] == 2
        pool.release(conn)
        dead.add(2)
        assert pool.acquire() is factory.made[3]


def test_reset_runs_on_return_and_a_failure_discards_the_connection_not_the_slot() -> None:
    factory = Factory()
    resets: List[int] = []

    def reset(conn: FakeConn) -> None:
        resets.append(conn.number)
        if len(resets) == 2:
            raise RuntimeError("cannot reset")

    with ConnectionPool(factory, min_size=1, max_size=1, reset=reset, timeout=1) as pool:
        conn = pool.acquire()
        pool.release(conn)
        assert resets == [0] and pool.idle_count == 1
        pool.release(pool.acquire())  # this reset fails
        assert conn.closed and pool.pool_size == 0
        assert pool.get_stats()["returns_bad"] == 1
        assert pool.acquire() is factory.made[1]


def test_custom_releaser_is_used_and_its_errors_are_contained() -> None:
    released: List[int] = []

    def releaser(conn: FakeConn) -> None:
        released.append(conn.number)
        raise OSError("already gone")

    pool = ConnectionPool(Factory(), min_size=2, max_size=2, releaser=releaser)
    pool.close_all()
    assert sorted(released) == [0, 1]


def test_lifo_and_fifo_reuse_order() -> None:
    def order(lifo: bool) -> List[int]:
        with ConnectionPool(Factory(), min_size=0, max_size=3, lifo=lifo) as pool:
            conns = [pool.acquire() for _ in range(3)]
            for conn in conns:
                pool.release(conn)
            return [pool.acquire().number for _ in range(3)]

    assert order(True) == [2, 1, 0]
    assert order(False) == [0, 1, 2]


def test_release_of_a_foreign_connection_is_refused() -> None:
    with ConnectionPool(Factory(), min_size=1, max_size=1) as pool:
        with pytest.raises(PoolError):
            pool.release(FakeConn(99))
        assert pool.idle_count == 1


def test_prefill_opens_up_to_max_size_and_reports_errors() -> None:
    factory = Factory()
    with ConnectionPool(factory, min_size=0, max_size=5) as pool:
        pool.prefill(3)
        assert pool.idle_count == 3
        pool.prefill(10)
        assert pool.pool_size == 5
    with ConnectionPool(factory, min_size=0, max_size=3) as pool:
        factory.failures = 1
        with pytest.raises(ConnectionError):
            pool.prefill(3)
        assert pool.pool_size == 0  # the failed slot (and the ones after it) are free
        pool.prefill(2)
        assert pool.idle_count == 2
        with pytest.raises(ValueError):
            pool.prefill(-1)


def test_background_keeper_starts_after_the_constructor_opened_min_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started first, the keeper reserved the slots: the constructor returned without
    ``min_size`` open and a failing factory's error was logged, never raised."""
    seen_at_start: List[int] = []
    start_keeper = ThreadedRunner.start_keeper

    def recording_start(runner: ThreadedRunner[Any]) -> None:
        seen_at_start.append(runner.idle_count)
        start_keeper(runner)

    monkeypatch.setattr(ThreadedRunner, "start_keeper", recording_start)
    factory = Factory()
    with ConnectionPool(factory, min_size=2, max_size=4, background=True) as pool:
        assert seen_at_start == [2]
        assert pool.idle_count == 2 and len(factory.made) == 2
    factory.failures = 2
    seen_at_start.clear()
    with pytest.raises(ConnectionError):
        ConnectionPool(factory, min_size=2, max_size=4, background=True)
    assert seen_at_start == []  # closed before any keeper ran
    assert factory.open_conns() == []


def test_a_connect_failure_frees_the_slot_and_reaches_the_caller() -> None:
    factory = Factory()
    with ConnectionPool(factory, min_size=0, max_size=1, timeout=1) as pool:
        factory.failures = 1
        with pytest.raises(ConnectionError):
            pool.acquire()
        assert pool.pool_size == 0
        assert pool.get_stats()["connections_errors"] == 1
        assert pool.acquire() is factory.made[0]


def test_close_all_wakes_waiters_with_a_clear_error() -> None:
    pool = ConnectionPool(Factory(), min_size=1, max_size=1, timeout=10)
    held = pool.acquire()
    outcomes: List[BaseException] = []

    def waiter() -> None:
        try:
            pool.acquire()
        except PoolError as error:
            outcomes.append(error)

    threads = [start_thread(waiter) for _ in range(3)]
    wait_until(lambda: pool.get_stats()["requests_waiting"] == 3)
    pool.close_all()
    join_all(threads)
    assert [str(error) for error in outcomes] == ["connection pool is closed"] * 3
    assert held.closed


# -- psycopg2 as the factory, against the real server -------------------------------------------


def test_psycopg2_factory_against_the_real_server(pg_dsn: str) -> None:
    used: List[int] = []
    guard = threading.Lock()

    def rollback(conn: Any) -> None:
        conn.rollback()

    pool = ConnectionPool(
        lambda: psycopg2.connect(pg_dsn, connect_timeout=10),
        min_size=2,
        max_size=3,
        timeout=10,
        reset=rollback,
    )
    try:
        assert pool.pool_size == 2

        def worker() -> None:
            for _ in range(5):
                with pool.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid(), pg_sleep(0.005)")
                    with guard:
                        used.append(cur.fetchone()[0])

        join_all([start_thread(worker) for _ in range(6)], bound=20)
        assert len(used) == 30 and len(set(used)) <= 3
        assert set(used) <= set(backend_pids(pg_dsn))  # real, live server sessions
        # The reset ran: nothing the borrower left open reaches the next one.
        with pool.connection() as conn:
            conn.cursor().execute("SELECT 1")
            assert conn.get_transaction_status() != 0  # left inside a transaction
        with pool.connection() as again:
            assert again is conn  # LIFO: the same connection
            assert again.get_transaction_status() == 0  # TRANSACTION_STATUS_IDLE
    finally:
        pool.close_all()
    deadline = time.monotonic() + 5
    while set(used) & set(backend_pids(pg_dsn)):
        assert time.monotonic() < deadline, "close_all left server sessions behind"
        time.sleep(0.02)


def test_psycopg2_factory_check_drops_a_terminated_backend(pg_dsn: str) -> None:
    def ping(conn: Any) -> bool:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.rollback()
        return True

    with ConnectionPool(
        lambda: psycopg2.connect(pg_dsn, connect_timeout=10), min_size=1, max_size=2, check=ping
    ) as pool:
        with pool.connection() as conn:
            pid = conn.get_backend_pid()
        terminate_backends(pg_dsn, [pid])
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            assert cur.fetchone()[0] != pid
        assert pool.get_stats()["connections_lost"] == 1


# -- issue 10 item 11: each face words errors in its own keywords -----------------------------


def test_errors_name_the_factory_pools_own_keywords_like_the_async_pool() -> None:
    """The timeout names ``timeout`` and ``max_size`` (what this pool's user passed), never
    the engine's ``pool_timeout``/``maxconn``; the foreign-release refusal is worded as the
    async pool words it."""
    with ConnectionPool(Factory(), min_size=1, max_size=1, timeout=0.05) as pool:
        held = pool.acquire()
        with pytest.raises(PoolTimeoutError) as timed_out:
            pool.acquire()
        message = str(timed_out.value)
        assert "timeout=0.05, max_size=1" in message
        assert "pool_timeout" not in message and "maxconn" not in message
        with pytest.raises(PoolError) as foreign:
            pool.release(FakeConn(99))
        pool.release(held)
        with pytest.raises(PoolError) as twice:
            pool.release(held)

    async def async_refusal() -> str:
        async with AsyncConnectionPool(Factory(), min_size=0, max_size=1) as async_pool:
            with pytest.raises(PoolError) as refused:
                await async_pool.release(FakeConn(99))
            return str(refused.value)

    expected = asyncio.run(asyncio.wait_for(async_refusal(), 10))
    assert str(foreign.value) == str(twice.value) == expected


# -- issue 10 item 8: a factory returning an object the pool holds; awkward objects ----------


def test_factory_returning_the_same_object_twice_is_refused_and_frees_the_slot() -> None:
    """A shared client returned by every ``factory()`` call went to two borrowers, and its
    second slot was lost for good. Now the second connect is a clear ``PoolError``, the
    object stays with its borrower, and the slot is free for a factory that recovers."""
    shared = FakeConn(0)
    calls: List[int] = []

    def factory() -> FakeConn:
        calls.append(1)
        return shared if len(calls) <= 3 else FakeConn(len(calls))

    pool: ConnectionPool[Any] = ConnectionPool(factory, min_size=0, max_size=2, timeout=0.2)
    first = pool.acquire()
    for _ in range(2):
        with pytest.raises(PoolError, match="returned an object this pool already holds"):
            pool.acquire()
    assert first is shared and not shared.closed
    assert pool.pool_size == 1  # the refused connects hold no slot
    second = pool.acquire()  # the factory now makes a new object: both slots usable
    assert second is not shared
    pool.release(first)
    pool.release(second)
    assert pool.idle_count == 2
    pool.close_all()


def test_factory_returning_none_is_refused_and_frees_the_slot() -> None:
    results: List[Any] = [None, FakeConn(1)]
    pool: ConnectionPool[Any] = ConnectionPool(
        lambda: results.pop(0), min_size=0, max_size=1, timeout=0.2
    )
    with pytest.raises(PoolError, match="returned None"):
        pool.acquire()
    assert pool.pool_size == 0
    conn = pool.acquire()  # max_size=1: the slot came back
    assert isinstance(conn, FakeConn)
    pool.release(conn)
    pool.close_all()


def test_prefill_with_a_factory_returning_one_object_is_refused() -> None:
    shared = FakeConn(0)
    with pytest.raises(PoolError, match="already holds"):
        ConnectionPool(lambda: shared, min_size=2, max_size=2)


@pytest.mark.parametrize("kind", AWKWARD_CONNECTION_KINDS, ids=lambda kind: kind.__name__)
def test_connections_of_any_kind_are_pooled_by_identity(kind: type) -> None:
    """Unhashable objects, ``__slots__`` without ``__weakref__``, ``__eq__`` that calls
    distinct objects equal: each is handed out to one borrower, comes back, is reused and
    is closed exactly once."""
    made: List[Any] = []
    pool: ConnectionPool[Any] = ConnectionPool(
        recording_factory(kind, made), **AWKWARD_POOL_OPTIONS
    )
    borrowed = [pool.acquire() for _ in range(3)]
    assert len({id(conn) for conn in borrowed}) == 3
    with pytest.raises(PoolTimeoutError):
        pool.acquire()
    for conn in borrowed:
        pool.release(conn)
    again = [pool.acquire() for _ in range(3)]
    assert {id(conn) for conn in again} == {id(conn) for conn in made}
    with pytest.raises(PoolError):
        pool.release(kind())  # equal to every borrowed one, yet not one of them
    for conn in again:
        pool.release(conn)
    pool.close_all()
    assert [conn.closes for conn in made] == [1, 1, 1]
