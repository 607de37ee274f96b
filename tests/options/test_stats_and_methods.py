"""The methods issue 3 adds: ``get_stats()`` / ``pop_stats()`` after a known sequence of
events, ``connection()``, the pool as a context manager, ``check()``, ``pool_name`` and a
``repr()`` that never shows the DSN."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Dict, List

import psycopg2
import psycopg2.extensions as ext
import pytest

import pgpool_compat
from tests.faults.support import peer_hung_up, wait_until
from tests.helpers import scalar, terminate_backends, threaded

pytestmark = pytest.mark.timeout(60)

GAUGES = ("pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting")
COUNTERS = (
    "requests_num", "requests_queued", "requests_wait_ms", "requests_errors",
    "connections_num", "connections_ms", "connections_errors", "connections_lost",
    "returns_bad", "usage_ms",
)


def kill_idle(dsn: str, conns: List[Any]) -> None:
    terminate_backends(dsn, [conn.info.backend_pid for conn in conns])
    assert peer_hung_up(conns)


def pick(stats: Dict[str, int], *keys: str) -> Dict[str, int]:
    return {key: stats[key] for key in keys}


# -- get_stats / pop_stats --------------------------------------------------------------------


@pytest.mark.own_session
def test_stats_after_a_known_sequence(pg_dsn: str, pools: List[Any]) -> None:
    fail_configure = threading.Event()

    def configure(conn: Any) -> None:
        if fail_configure.is_set():
            raise RuntimeError("configure refused")

    pool = threaded(pools, 1, 2, pg_dsn, pool_timeout=0.3, pool_configure=configure)
    stats = pool.get_stats()
    assert set(stats) == set(GAUGES) | set(COUNTERS)
    assert all(isinstance(value, int) for value in stats.values())
    assert pick(stats, *GAUGES) == {"pool_min": 1, "pool_max": 2, "pool_size": 1,
                                    "pool_available": 1, "requests_waiting": 0}
    assert stats["connections_num"] == 1 and stats["connections_ms"] >= 0
    assert all(stats[key] == 0 for key in COUNTERS if key.startswith(("requests", "returns")))

    first, second = pool.getconn(), pool.getconn()  # one idle, one new
    checked_out_at = time.monotonic()
    stats = pool.get_stats()
    assert pick(stats, "pool_size", "pool_available", "requests_num", "connections_num") == {
        "pool_size": 2, "pool_available": 0, "requests_num": 2, "connections_num": 2}

    # A third caller waits (seen as requests_waiting) and times out after 0.3 s.
    failures: List[BaseException] = []
    waiter = threading.Thread(target=lambda: failures.append(_error_of(pool.getconn)))
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, 5, 0.005)
    waiter.join(5)
    assert len(failures) == 1 and isinstance(failures[0], pgpool_compat.PoolTimeout)
    stats = pool.get_stats()
    assert pick(stats, "requests_num", "requests_queued", "requests_errors",
                "requests_waiting") == {"requests_num": 3, "requests_queued": 1,
                                        "requests_errors": 1, "requests_waiting": 0}
    assert 280 <= stats["requests_wait_ms"] <= 1000

    second.close()
    pool.putconn(second)  # broken: cannot be kept
    pool.putconn(first)  # held about 0.3 s
    held_ms = (time.monotonic() - checked_out_at) * 1000
    stats = pool.get_stats()
    assert 250 <= stats["usage_ms"] <= 2 * held_ms + 50
    assert stats["returns_bad"] == 1 and stats["pool_size"] == 1

    kill_idle(pg_dsn, [first])
    third = pool.getconn()  # the dead idle one is dropped, a new one opened
    assert third is not first
    fail_configure.set()
    with pytest.raises(RuntimeError, match="configure refused"):
        pool.getconn()  # a failed connect
    pool.putconn(third)

    stats = pool.get_stats()
    assert pick(stats, *COUNTERS[:3], "requests_errors", "connections_num",
                "connections_errors", "connections_lost", "returns_bad") == {
        "requests_num": 5, "requests_queued": 1, "requests_wait_ms": stats["requests_wait_ms"],
        "requests_errors": 2, "connections_num": 3, "connections_errors": 1,
        "connections_lost": 1, "returns_bad": 1}
    assert pick(stats, *GAUGES) == {"pool_min": 1, "pool_max": 2, "pool_size": 1,
                                    "pool_available": 1, "requests_waiting": 0}

    popped = pool.pop_stats()
    assert popped == stats  # nothing happened in between
    after = pool.get_stats()
    assert pick(after, *GAUGES) == pick(stats, *GAUGES)  # gauges are not reset
    assert pick(after, *COUNTERS) == dict.fromkeys(COUNTERS, 0)
    pool.putconn(pool.getconn())
    assert pool.pop_stats()["requests_num"] == 1  # counting goes on from zero


def test_returns_bad_counts_a_broken_return_even_above_the_idle_cap(
    pg_dsn: str, pools: List[Any]
) -> None:
    # A closed connection returned while minconn connections are already idle is still a bad
    # return (psycopg_pool's meaning: "returned to the pool in a bad state").
    pool = threaded(pools, 1, 2, pg_dsn)
    first, second = pool.getconn(), pool.getconn()
    pool.putconn(first)  # the idle cap (minconn=1) is now reached
    second.close()
    pool.putconn(second)
    assert pool.get_stats()["returns_bad"] == 1


def _error_of(call: Any) -> BaseException:
    try:
        call()
    except BaseException as error:
        return error
    raise AssertionError("expected an error")


# -- connection() -----------------------------------------------------------------------------


@pytest.fixture
def table(admin_conn: Any) -> Iterator[str]:
    """A table with a deferred unique constraint: a duplicate fails at commit, not insert."""
    name = f"opt_rows_{uuid.uuid4().hex[:8]}"
    with admin_conn.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {name} (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    yield name
    with admin_conn.cursor() as cursor:
        cursor.execute(f"DROP TABLE {name}")


def rows(admin_conn: Any, table: str) -> List[int]:
    with admin_conn.cursor() as cursor:
        cursor.execute(f"SELECT x FROM {table} ORDER BY x")
        return [row[0] for row in cursor.fetchall()]


def test_connection_commits_on_success(
    pg_dsn: str, pools: List[Any], admin_conn: Any, table: str
) -> None:
    pool = threaded(pools, 1, 1, pg_dsn)
    with pool.connection() as conn:
        with conn.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES (1)")
        assert pool.get_stats()["pool_available"] == 0
    assert rows(admin_conn, table) == [1]
    assert pool._used == {} and pool._pool == [conn]
    assert conn.info.transaction_status == ext.TRANSACTION_STATUS_IDLE


def test_connection_rolls_back_on_exception(
    pg_dsn: str, pools: List[Any], admin_conn: Any, table: str
) -> None:
    pool = threaded(pools, 1, 1, pg_dsn)
    with pytest.raises(ZeroDivisionError), pool.connection() as conn:
        with conn.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES (1)")
        _ = 1 / 0
    assert rows(admin_conn, table) == []
    assert pool._used == {} and pool._pool == [conn]
    assert conn.info.transaction_status == ext.TRANSACTION_STATUS_IDLE


def test_connection_is_returned_when_commit_fails(
    pg_dsn: str, pools: List[Any], admin_conn: Any, table: str
) -> None:
    pool = threaded(pools, 1, 1, pg_dsn)
    with pytest.raises(psycopg2.IntegrityError), pool.connection() as conn:
        conn.cursor().execute(f"INSERT INTO {table} VALUES (1), (1)")  # checked at commit
    assert rows(admin_conn, table) == []
    assert pool._used == {}
    again = pool.getconn()  # maxconn=1: a leaked slot would say "exhausted"
    assert again is conn and scalar(again, "SELECT 1") == 1
    again.rollback()
    pool.putconn(again)


@pytest.mark.own_session
def test_connection_is_returned_when_rollback_fails(
    pg_dsn: str, pools: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_name="audit")
    with caplog.at_level(logging.INFO, logger="pgpool_compat"), pytest.raises(
        KeyError
    ), pool.connection() as conn:  # the body's error, not rollback's
        assert scalar(conn, "SELECT 1") == 1
        kill_idle(pg_dsn, [conn])
        raise KeyError("body failed")
    failed = [r.getMessage() for r in caplog.records if "rollback after" in r.getMessage()]
    assert len(failed) == 1 and failed[0].startswith("audit: rollback after an error failed: ")
    assert pool._used == {}
    fresh = pool.getconn()
    assert fresh is not conn and scalar(fresh, "SELECT 1") == 1
    fresh.rollback()
    pool.putconn(fresh)


def test_connection_with_a_key(pg_dsn: str, pools: List[Any]) -> None:
    pool = threaded(pools, 1, 2, pg_dsn)
    with pool.connection("report") as conn:
        assert pool._used == {"report": conn}
        assert pool.getconn("report") is conn  # the same key gets the same connection
    assert pool._used == {}


# -- the pool as a context manager ------------------------------------------------------------


def test_pool_context_manager_closes_on_exit(pg_dsn: str) -> None:
    with pgpool_compat.ThreadedConnectionPool(1, 2, pg_dsn) as pool:
        assert isinstance(pool, pgpool_compat.ThreadedConnectionPool) and not pool.closed
        borrowed = pool.getconn()
        idle = pool._pool[:] if pool._pool else [pool.getconn()]
    assert pool.closed and borrowed.closed and all(conn.closed for conn in idle)
    with pytest.raises(pgpool_compat.PoolError, match="closed"):
        pool.getconn()


def test_pool_context_manager_closes_on_error_and_lets_it_through(pg_dsn: str) -> None:
    with pytest.raises(LookupError), pgpool_compat.SimpleConnectionPool(1, 1, pg_dsn) as pool:
        conn = pool.getconn()
        raise LookupError("body failed")
    assert pool.closed and conn.closed


def test_pool_context_manager_tolerates_an_explicit_closeall(pg_dsn: str) -> None:
    with pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn) as pool:
        pool.closeall()
    assert pool.closed


# -- check() ----------------------------------------------------------------------------------


@pytest.mark.own_session
@pytest.mark.parametrize("check", ["socket", None])
def test_check_drops_dead_idle_connections_and_counts_them(
    check: Any, pg_dsn: str, pools: List[Any]
) -> None:
    pool = threaded(pools, 4, 4, pg_dsn, pool_check=check)
    borrowed = pool.getconn()
    idle = list(pool._pool)
    assert pool.check() == 0  # all alive
    kill_idle(pg_dsn, idle[:2])
    assert pool.check() == 2  # with pool_check=None too: asking is asking
    assert [bool(conn.closed) for conn in idle] == [True, True, False]
    assert pool._pool == idle[2:] and pool._used != {}
    stats = pool.get_stats()
    assert stats["connections_lost"] == 2 and stats["pool_available"] == 1
    assert stats["pool_size"] == 2
    assert scalar(borrowed, "SELECT 1") == 1  # a borrowed connection is not touched
    borrowed.rollback()
    pool.putconn(borrowed)


@pytest.mark.own_session
def test_check_with_ping_pings_every_idle_connection(
    pg_dsn: str, pools: List[Any], admin_conn: Any
) -> None:
    pool = threaded(pools, 2, 2, pg_dsn, pool_check="ping", pool_ping_after=60)
    for conn in pool._pool:
        conn.autocommit = True
        scalar(conn, "SELECT 'before the check'")
        conn.autocommit = False
    assert pool.check() == 0
    for conn in pool._pool:
        query = scalar(admin_conn, "SELECT query FROM pg_stat_activity WHERE pid = %s",
                       (conn.info.backend_pid,))
        assert query == "SELECT 1"


def test_getconn_is_not_refused_while_check_runs(pg_dsn: str, pools: List[Any]) -> None:
    # check() takes the idle connections out to probe them; a caller arriving meanwhile must not
    # be told "exhausted" by a pool whose connections are all idle: it should wait for the
    # probe, as it waits for a return being reset (README, design decisions).
    probing = threading.Event()

    def slow_check(conn: Any) -> bool:
        probing.set()
        time.sleep(0.5)
        return True

    pool = threaded(pools, 2, 2, pg_dsn, pool_check=slow_check)
    checker = threading.Thread(target=pool.check, daemon=True)
    checker.start()
    assert probing.wait(5)
    try:
        conn = pool.getconn()
    finally:
        checker.join(5)
    assert not checker.is_alive()
    assert scalar(conn, "SELECT 1") == 1
    conn.rollback()
    pool.putconn(conn)


def test_check_during_a_slow_checkout_never_hands_a_connection_out_twice(
    pg_dsn: str, pools: List[Any]
) -> None:
    # A checkout runs a slow check with the lock released; check() runs meanwhile and puts
    # the idle connections back. The checkout then goes on to the next idle connection: it must
    # take it from the pool as it is now, not from a stale copy that check() already shelved.
    failing: List[Any] = []

    def slow_check(conn: Any) -> bool:
        if conn in failing:
            time.sleep(0.6)
            return False
        time.sleep(0.05)
        return True

    pool = threaded(pools, 3, 3, pg_dsn, pool_check=slow_check)
    oldest, middle, newest = list(pool._pool)
    failing.append(newest)  # checked out first (LIFO), and found bad after 0.6 s
    got: List[Any] = []
    borrower = threading.Thread(target=lambda: got.append(pool.getconn()), daemon=True)
    borrower.start()
    time.sleep(0.2)  # the borrower is inside its slow check of the newest
    assert pool.check() == 0
    borrower.join(5)
    assert len(got) == 1 and got[0] in (oldest, middle)
    assert got[0] not in pool._pool, "handed out and idle at the same time"
    mine = pool.getconn()
    assert mine is not got[0], "the same connection handed to two callers"
    pool.putconn(mine)
    pool.putconn(got[0])


def test_check_on_a_closed_pool_raises(pg_dsn: str) -> None:
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn)
    pool.closeall()
    with pytest.raises(pgpool_compat.PoolError, match="connection pool is closed"):
        pool.check()


# -- pool_name, repr, logs --------------------------------------------------------------------


def test_pool_name_in_repr_and_log_records(
    pg_dsn: str, pools: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="pgpool_compat"):
        pool = threaded(pools, 0, 1, pg_dsn, pool_name="orders-db", pool_timeout=0)
        conn = pool.getconn()  # opens a connection: logged
        with pytest.raises(pgpool_compat.PoolTimeout):
            pool.getconn()  # a timeout: logged
    assert "'orders-db'" in repr(pool)
    assert pool.name == "orders-db"
    messages = [record.getMessage() for record in caplog.records
                if record.name == "pgpool_compat"]
    assert any("opened" in message for message in messages), messages
    assert any("timed out" in message for message in messages), messages
    assert all("orders-db" in message for message in messages), messages
    pool.putconn(conn)


def test_unnamed_pool_gets_a_name(pg_dsn: str, pools: List[Any]) -> None:
    first = threaded(pools, 0, 1, pg_dsn)
    second = threaded(pools, 0, 1, pg_dsn)
    assert first.name != second.name and first.name in repr(first)


def test_repr_logs_and_errors_never_show_the_dsn(
    pg_dsn: str, pools: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "hunter2-" + uuid.uuid4().hex[:8]
    dsn = f"{pg_dsn} password={secret}"  # the test server trusts loopback: it is ignored
    with caplog.at_level(logging.DEBUG, logger="pgpool_compat"):
        pool = threaded(pools, 1, 1, dsn, pool_timeout=0.05, pool_name="secretive")
        conn = pool.getconn()
        timeout = _error_of(pool.getconn)
        pool.putconn(conn)
    seen = [repr(pool), str(pool), str(timeout), repr(timeout), repr(pool.get_stats())]
    seen += [record.getMessage() for record in caplog.records]
    for text in seen:
        assert secret not in text and "password" not in text and pg_dsn not in text, text
    pool.closeall()
    assert secret not in repr(pool)
