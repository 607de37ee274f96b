"""``pool_timeout``: callers wait at ``maxconn`` and are served first come, first served.

Waiters are started one at a time and each is seen queued (``requests_waiting``) before the
next arrives, so their arrival order is known and the hand-off order can be checked exactly.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, List, Optional

import psycopg2
import psycopg2.pool
import pytest

import pgpool_compat
from tests.faults.support import wait_until
from tests.helpers import select_one, threaded

pytestmark = pytest.mark.timeout(60)

JOIN = 10.0  # longest any helper thread may take to finish


class Waiter(threading.Thread):
    """A thread that calls ``getconn()`` once and remembers what came back, and when."""

    def __init__(self, pool: Any, name: str, hold: float = 0.0, log: Optional[List[Any]] = None):
        super().__init__(name=name, daemon=True)
        self.pool = pool
        self.hold = hold  # > 0: use the connection that long, then put it back
        self.log = log if log is not None else []
        self.conn: Any = None
        self.error: Optional[BaseException] = None
        self.started_at = 0.0
        self.finished_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.conn = self.pool.getconn()
        except BaseException as error:
            self.error = error
            self.finished_at = time.monotonic()
            return
        self.finished_at = time.monotonic()
        self.log.append((self.name, self.conn))
        if self.hold:
            time.sleep(self.hold)
            self.pool.putconn(self.conn)

    def finish(self) -> None:
        self.join(JOIN)
        assert not self.is_alive(), f"{self.name} still blocked after {JOIN} s"


def waiting(pool: Any) -> int:
    count: int = pool.get_stats()["requests_waiting"]
    return count


def queue(pool: Any, waiter: Waiter, expected: int) -> Waiter:
    """Start ``waiter`` and return once the pool counts ``expected`` waiters."""
    waiter.start()
    assert wait_until(lambda: waiting(pool) == expected, 5, 0.005), (
        f"{waiter.name} not queued: {pool.get_stats()}"
    )
    return waiter


def test_waiter_gets_the_returned_connection(pg_dsn: str, pools: List[Any]) -> None:
    pool = threaded(pools, 0, 1, pg_dsn, pool_timeout=10)
    held = pool.getconn()
    waiter = queue(pool, Waiter(pool, "w"), 1)
    time.sleep(0.1)
    assert waiter.is_alive() and waiter.conn is None  # really blocked, not failed
    returned_at = time.monotonic()
    pool.putconn(held)
    waiter.finish()
    assert waiter.error is None
    assert waiter.conn is held  # the very connection, no reconnect
    assert waiter.finished_at - returned_at < 1.0  # woken by the return, not by a timer
    assert select_one(waiter.conn) == 1
    stats = pool.get_stats()
    assert stats["requests_queued"] == 1 and stats["requests_errors"] == 0
    assert stats["connections_num"] == 1
    assert 100 <= stats["requests_wait_ms"] < 5000  # it waited at least the 0.1 s above
    pool.putconn(waiter.conn)


def test_without_pool_timeout_a_full_pool_fails_at_once(pg_dsn: str, pools: List[Any]) -> None:
    # The control for the test above: the waiting is the option's doing.
    pool = threaded(pools, 0, 1, pg_dsn)
    pool.getconn()
    started = time.monotonic()
    with pytest.raises(psycopg2.pool.PoolError) as info:
        pool.getconn()
    assert time.monotonic() - started < 0.5
    assert type(info.value) is psycopg2.pool.PoolError  # not a PoolTimeout
    assert str(info.value) == "connection pool exhausted"


@pytest.mark.parametrize("maxconn", [1, 3])
def test_waiters_are_served_in_arrival_order(
    maxconn: int, pg_dsn: str, pools: List[Any]
) -> None:
    pool = threaded(pools, maxconn, maxconn, pg_dsn, pool_timeout=20)
    out = [pool.getconn() for _ in range(maxconn)]  # connections to return, oldest first
    log: List[Any] = []
    names = [f"w{i}" for i in range(6)]
    waiters = [queue(pool, Waiter(pool, name, log=log), i + 1) for i, name in enumerate(names)]
    # Return one connection at a time and see who got it before returning the next.
    for served in range(len(names)):
        returned = out.pop(0)
        pool.putconn(returned)
        assert wait_until(lambda n=served: len(log) == n + 1, 5, 0.005), log
        name, conn = log[-1]
        assert (name, conn) == (names[served], returned)
        out.append(conn)
    for waiter in waiters:
        waiter.finish()
    assert [waiter.error for waiter in waiters] == [None] * len(names)
    stats = pool.get_stats()
    assert stats["requests_queued"] == len(names) and stats["connections_num"] == maxconn
    for conn in out:
        pool.putconn(conn)


def test_a_latecomer_cannot_barge_ahead_of_a_waiter(pg_dsn: str, pools: List[Any]) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_timeout=10)
    held = pool.getconn()
    log: List[Any] = []
    first = queue(pool, Waiter(pool, "queued", hold=0.2, log=log), 1)
    # Return and ask again at once, in the same thread: the queued waiter has not even run
    # yet, so a pool that lets callers compete for the lock would give it back to us.
    pool.putconn(held)
    again = pool.getconn()
    log.append(("latecomer", again))
    first.finish()
    assert [name for name, _ in log] == ["queued", "latecomer"]
    assert log[0][1] is held and again is held
    pool.putconn(again)


def test_a_latecomer_thread_queues_behind(pg_dsn: str, pools: List[Any]) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_timeout=10)
    held = pool.getconn()
    log: List[Any] = []
    early = queue(pool, Waiter(pool, "early", hold=0.3, log=log), 1)
    pool.putconn(held)
    assert wait_until(lambda: bool(log), 5, 0.005)  # early holds it now
    late = queue(pool, Waiter(pool, "late", hold=0.01, log=log), 1)
    early.finish()
    late.finish()
    assert [name for name, _ in log] == ["early", "late"]
    assert late.finished_at - late.started_at >= 0.1  # it waited for early's return


def test_timeout_is_a_pool_error_saying_how_long_it_waited(
    pg_dsn: str, pools: List[Any]
) -> None:
    timeout = 0.4
    pool = threaded(pools, 1, 1, pg_dsn, pool_timeout=timeout)
    held = pool.getconn()
    other = queue(pool, Waiter(pool, "other"), 1)  # one more caller waiting alongside
    started = time.monotonic()
    with pytest.raises(pgpool_compat.PoolTimeout) as info:
        pool.getconn()
    waited = time.monotonic() - started
    error = info.value
    assert isinstance(error, psycopg2.pool.PoolError)
    assert pgpool_compat.PoolTimeoutError is pgpool_compat.PoolTimeout
    message = str(error)
    assert message.startswith("connection pool exhausted")
    assert timeout - 0.02 <= waited < timeout + 0.5
    said = re.search(r"(\d+\.\d+) s", message)
    assert said is not None, message
    assert abs(float(said.group(1)) - timeout) < 0.3
    assert "waiting" in message  # and how many others wait
    other.finish()
    assert isinstance(other.error, pgpool_compat.PoolTimeout)
    stats = pool.get_stats()
    assert stats["requests_errors"] == 2 and stats["requests_queued"] == 2
    assert stats["requests_waiting"] == 0
    pool.putconn(held)
    assert pool.getconn() is held  # a timed-out waiter leaves nothing behind


def test_pool_timeout_zero_fails_at_once_with_pool_timeout(
    pg_dsn: str, pools: List[Any]
) -> None:
    pool = threaded(pools, 0, 1, pg_dsn, pool_timeout=0)
    pool.getconn()
    started = time.monotonic()
    with pytest.raises(pgpool_compat.PoolTimeout, match=r"^connection pool exhausted"):
        pool.getconn()
    assert time.monotonic() - started < 0.2
    assert pool.get_stats()["requests_waiting"] == 0


def test_closeall_wakes_every_waiter(pg_dsn: str, pools: List[Any]) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_timeout=30)
    held = pool.getconn()
    waiters = [queue(pool, Waiter(pool, f"w{i}"), i + 1) for i in range(4)]
    closed_at = time.monotonic()
    pool.closeall()
    for waiter in waiters:
        waiter.finish()
    for waiter in waiters:
        assert type(waiter.error) is psycopg2.pool.PoolError, waiter.error
        assert str(waiter.error) == "connection pool is closed"
        assert waiter.finished_at - closed_at < 2.0  # woken, not timed out after 30 s
    assert held.closed


def test_a_slot_freed_by_close_goes_to_the_oldest_waiter(
    pg_dsn: str, pools: List[Any]
) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_timeout=10)
    held = pool.getconn()
    log: List[Any] = []
    oldest = queue(pool, Waiter(pool, "oldest", hold=0.2, log=log), 1)
    younger = queue(pool, Waiter(pool, "younger", hold=0.01, log=log), 2)
    pool.putconn(held, close=True)
    assert held.closed
    oldest.finish()
    younger.finish()
    assert [name for name, _ in log] == ["oldest", "younger"]
    fresh = log[0][1]
    assert fresh is not held and not fresh.closed  # the waiter connected in the freed slot
    assert log[1][1] is fresh  # and the younger one got it when it came back
    assert select_one(fresh) == 1
    stats = pool.get_stats()
    assert stats["connections_num"] == 2 and stats["pool_size"] == 1


# -- the hand-off combined with other options -------------------------------------------------


def test_waiter_gets_a_connection_reset_by_discard(pg_dsn: str, pools: List[Any]) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_timeout=10, pool_reset="discard")
    held = pool.getconn()
    held.autocommit = True
    with held.cursor() as cursor:
        cursor.execute("SET search_path TO pg_catalog")
    waiter = queue(pool, Waiter(pool, "w"), 1)
    pool.putconn(held)
    waiter.finish()
    assert waiter.conn is held and held.autocommit is False
    with held.cursor() as cursor:
        cursor.execute("SHOW search_path")
        assert cursor.fetchone()[0] == '"$user", public'
    held.rollback()
    pool.putconn(held)


def test_waiter_connects_when_an_expired_connection_comes_back(
    pg_dsn: str, pools: List[Any]
) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_timeout=10, pool_max_lifetime=0.2)
    held = pool.getconn()
    waiter = queue(pool, Waiter(pool, "w"), 1)
    time.sleep(0.25)
    pool.putconn(held)  # expired: closed, its slot goes to the waiter
    waiter.finish()
    assert held.closed and waiter.error is None
    assert waiter.conn is not held and select_one(waiter.conn) == 1
    pool.putconn(waiter.conn)


def test_a_failed_connect_in_a_waiters_slot_passes_the_slot_on(
    pg_dsn: str, pools: List[Any]
) -> None:
    refuse = threading.Event()

    def configure(conn: Any) -> None:
        if refuse.is_set():
            refuse.clear()  # refuse exactly one connection
            raise RuntimeError("configure refused")

    pool = threaded(pools, 1, 1, pg_dsn, pool_timeout=10, pool_configure=configure)
    held = pool.getconn()
    log: List[Any] = []
    first = queue(pool, Waiter(pool, "first", log=log), 1)
    second = queue(pool, Waiter(pool, "second", log=log), 2)
    refuse.set()
    pool.putconn(held, close=True)  # the slot goes to "first", whose connect fails
    first.finish()
    second.finish()
    assert isinstance(first.error, RuntimeError) and first.conn is None
    assert second.error is None and select_one(second.conn) == 1  # it got the slot next
    assert [name for name, _ in log] == ["second"]
    stats = pool.get_stats()
    assert stats["connections_errors"] == 1 and stats["pool_size"] == 1
    pool.putconn(second.conn)


class KeyedWaiter(Waiter):
    """A waiter that asks for a connection under a given key."""

    def __init__(self, pool: Any, name: str, key: str) -> None:
        super().__init__(pool, name)
        self.key = key

    def run(self) -> None:
        try:
            self.conn = self.pool.getconn(self.key)
        except BaseException as error:
            self.error = error


def test_two_waiters_for_the_same_key_share_its_connection(
    pg_dsn: str, pools: List[Any]
) -> None:
    # psycopg2.pool's rule: getconn(key) for a key in use returns that key's connection. Two
    # callers waiting for one key must never get two connections booked under it.
    pool = threaded(pools, 2, 2, pg_dsn, pool_timeout=3)
    first, second = pool.getconn(), pool.getconn()
    a = queue(pool, KeyedWaiter(pool, "a", "report"), 1)
    b = queue(pool, KeyedWaiter(pool, "b", "report"), 2)
    pool.putconn(first)  # "a" gets it under "report"; "b" wants "report" too
    a.finish()
    assert a.conn is first
    pool.putconn(second)
    b.finish()
    assert b.error is None and b.conn is first, (b.conn, b.error)
    assert pool._used == {"report": first}
    assert second in pool._pool  # the other connection went back idle, not under "report"
    pool.putconn(first, "report")
    assert pool._used == {} and pool._rused == {}


@pytest.mark.own_session
def test_every_option_at_once_under_threads(pg_dsn: str, pools: List[Any]) -> None:
    """Eight threads borrow from a small pool with every option on, while check() runs too:
    no connection is ever in two hands, every one handed out works, the books end clean."""
    maxconn, threads, run_for = 3, 8, 2.5
    pool = threaded(
        pools, 1, maxconn, pg_dsn, pool_timeout=10, pool_max_lifetime=0.4, pool_max_idle=0.2,
        pool_check="ping", pool_ping_after=0.05, pool_reset="discard", pool_background=True,
        pool_lifo=False, pool_name="everything",
    )
    owners: dict[int, str] = {}
    owners_lock = threading.Lock()
    problems: List[str] = []
    deadline = time.monotonic() + run_for

    def borrow(name: str) -> None:
        while time.monotonic() < deadline and not problems:
            conn = pool.getconn()
            with owners_lock:
                if id(conn) in owners:
                    problems.append(f"{name} got the connection {owners[id(conn)]} holds")
                owners[id(conn)] = name
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SHOW search_path")
                    if cursor.fetchone()[0] != '"$user", public':
                        problems.append(f"{name} saw another borrower's search_path")
                    cursor.execute("SET search_path TO pg_catalog")
                conn.commit()
            except psycopg2.Error as error:
                problems.append(f"{name}: {type(error).__name__}: {error}")
            finally:
                with owners_lock:
                    owners.pop(id(conn), None)
                pool.putconn(conn)

    def checker() -> None:
        while time.monotonic() < deadline and not problems:
            pool.check()
            time.sleep(0.05)

    workers = [threading.Thread(target=borrow, args=(f"t{i}",), daemon=True)
               for i in range(threads)]
    workers.append(threading.Thread(target=checker, daemon=True))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(run_for + JOIN)
    assert not any(worker.is_alive() for worker in workers)
    assert problems == []
    with pool._lock:
        idle = list(pool._pool)
        assert pool._used == {} and pool._rused == {}
        assert len(set(map(id, idle))) == len(idle) <= maxconn
        assert all(not conn.closed for conn in idle)
    stats = pool.get_stats()
    assert stats["pool_size"] <= maxconn and stats["requests_waiting"] == 0
    assert stats["requests_num"] > threads
