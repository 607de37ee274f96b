"""What happens to a connection between two borrowers: ``pool_check`` (socket probe, ping,
callable, none), ``pool_check_timeout``, ``pool_reset`` (rollback, discard, callable) and
``pool_configure``. Each behaviour is shown absent when its option is off.

Whether a ping ran is read on the server: ``pg_stat_activity.query`` shows a backend's last
statement, so a connection that ran ``SELECT 'marker'`` and then shows ``SELECT 1`` was pinged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, List

import psycopg2
import psycopg2.extensions as ext
import pytest

import pgpool_compat
from pgpool_compat.testing import PostgresServer
from tests.faults.support import peer_hung_up, wait_until
from tests.helpers import pid_of, scalar, terminate_backends, threaded

pytestmark = pytest.mark.timeout(60)


def mark(conn: Any, label: str) -> None:
    """Run a statement the server remembers as this backend's last one (in autocommit, so no
    ROLLBACK follows it)."""
    conn.autocommit = True
    scalar(conn, f"SELECT 'marker-{label}'")
    conn.autocommit = False


def last_query(admin_conn: Any, conn: Any) -> str:
    query: str = scalar(admin_conn, "SELECT query FROM pg_stat_activity WHERE pid = %s",
                        (pid_of(conn),))
    return query


def kill_idle(dsn: str, conns: List[Any]) -> None:
    """Terminate the backends and wait until the client sockets have seen the hang-up."""
    terminate_backends(dsn, [pid_of(conn) for conn in conns])
    assert peer_hung_up(conns)


# -- pool_check: socket (the default) and None ------------------------------------------------


@pytest.mark.own_session
@pytest.mark.parametrize("check", ["socket", None])
def test_socket_probe_drops_a_terminated_idle_connection(
    check: Any, pg_dsn: str, pools: List[Any]
) -> None:
    pool = threaded(pools, 1, 2, pg_dsn, pool_check=check)
    idle = pool.getconn()
    pool.putconn(idle)
    kill_idle(pg_dsn, [idle])
    conn = pool.getconn()
    if check is None:  # no probe: the dead one is handed out, and fails on first use
        assert conn is idle
        with pytest.raises(psycopg2.OperationalError):
            scalar(conn, "SELECT 1")
        assert pool.get_stats()["connections_lost"] == 0
        pool.putconn(conn)
        return
    assert conn is not idle and idle.closed
    assert scalar(conn, "SELECT 1") == 1
    stats = pool.get_stats()
    assert stats["connections_lost"] == 1 and stats["pool_size"] == 1
    pool.putconn(conn)


@pytest.mark.own_session
def test_socket_probe_keeps_a_connection_with_a_pending_notification(
    pg_dsn: str, pools: List[Any], admin_conn: Any
) -> None:
    # A readable idle socket is not necessarily a dead one.
    channel = f"opt_{uuid.uuid4().hex[:8]}"
    pool = threaded(pools, 1, 1, pg_dsn)
    conn = pool.getconn()
    conn.autocommit = True
    scalar(conn, f"LISTEN {channel}; SELECT 1")
    conn.autocommit = False
    pool.putconn(conn)
    scalar(admin_conn, f"NOTIFY {channel}, 'hello'; SELECT 1")
    assert select.select([conn], [], [], 5)[0]  # the notification is waiting on the socket
    again = pool.getconn()
    assert again is conn
    assert [n.payload for n in conn.notifies] == ["hello"]
    assert pool.get_stats()["connections_lost"] == 0
    pool.putconn(again)


@pytest.mark.own_session  # kills the connection's own backend: PgBouncer would hide it
def test_shared_keyed_connection_whose_server_hung_up_is_not_handed_out(
    pg_dsn: str, pools: List[Any]
) -> None:
    """A keyed connection once lent to two holders is never entered by the probe; but when
    its server has closed the socket (TCP CLOSE_WAIT, read from the kernel) it is dead, and
    the next checkout gets a working connection instead (found by the fault model test)."""
    pool = threaded(pools, 1, 2, pg_dsn)
    conn = pool.getconn("a")
    assert pool.getconn("a") is conn
    pool.putconn(conn, "a")  # idle again, still marked shared
    terminate_backends(pg_dsn, [pid_of(conn)])
    assert peer_hung_up([conn])
    fresh = pool.getconn()
    assert fresh is not conn
    assert scalar(fresh, "SELECT 1") == 1
    pool.putconn(fresh)


def test_probe_skips_connection_in_use_by_another_thread(pg_dsn: str, pools: List[Any]) -> None:
    """Keyed connections are shared: one holder returns it while the other streams a query.
    Later checkouts get it untouched (as stock does); a probe calling into libpq there would
    read the other thread's rows and corrupt its protocol state."""
    pool = threaded(pools, 1, 2, pg_dsn)
    conn = pool.getconn("k")
    assert pool.getconn("k") is conn
    conn.autocommit = True
    queries, errors = 200, []
    done = threading.Event()

    def stream() -> None:
        try:
            for _ in range(queries):
                try:
                    with conn.cursor() as cursor:
                        cursor.execute("SELECT generate_series(1, 2000)")
                        assert len(cursor.fetchall()) == 2000
                except psycopg2.Error as error:
                    errors.append(str(error).strip())
        finally:
            done.set()

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    pool.putconn(conn, "k")  # one holder is done; the other still streams
    deadline = time.monotonic() + 20
    while not done.is_set() and time.monotonic() < deadline:
        pool.putconn(pool.getconn())
    streamer.join(timeout=10)
    assert done.is_set() and errors == []


# -- pool_check="ping" ------------------------------------------------------------------------


@pytest.mark.own_session
@pytest.mark.parametrize("check", ["ping", "socket"])
def test_ping_runs_only_after_ping_after_seconds_idle(
    check: str, pg_dsn: str, pools: List[Any], admin_conn: Any
) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_check=check, pool_ping_after=0.3)
    conn = pool.getconn()
    mark(conn, "fresh")
    pool.putconn(conn)
    assert pool.getconn() is conn  # idle a moment: no ping
    assert last_query(admin_conn, conn) == "SELECT 'marker-fresh'"
    pool.putconn(conn)
    time.sleep(0.4)
    assert pool.getconn() is conn
    expected = "SELECT 1" if check == "ping" else "SELECT 'marker-fresh'"
    assert last_query(admin_conn, conn) == expected
    # The ping leaves the borrower's session as it was: no transaction, autocommit off.
    assert conn.autocommit is False
    assert conn.info.transaction_status == ext.TRANSACTION_STATUS_IDLE
    pool.putconn(conn)


@pytest.mark.own_session
def test_ping_after_zero_pings_every_checkout(
    pg_dsn: str, pools: List[Any], admin_conn: Any
) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_check="ping", pool_ping_after=0)
    conn = pool.getconn()
    for round_ in range(3):
        mark(conn, str(round_))
        pool.putconn(conn)
        assert pool.getconn() is conn
        assert last_query(admin_conn, conn) == "SELECT 1"
    pool.putconn(conn)


@pytest.mark.own_session
@pytest.mark.parametrize("one_dies", [True, False])
def test_after_a_dead_connection_the_older_ones_are_pinged(
    one_dies: bool, pg_dsn: str, pools: List[Any], admin_conn: Any
) -> None:
    pool = threaded(pools, 0, 4, pg_dsn, pool_check="ping", pool_ping_after=60, pool_max_idle=60)
    oldest, older, newest = [pool.getconn() for _ in range(3)]  # opened in this order
    for label, conn in (("oldest", oldest), ("older", older), ("newest", newest)):
        mark(conn, label)
        pool.putconn(conn)  # newest returned last: it is checked out first
    if one_dies:
        kill_idle(pg_dsn, [newest])
    first = pool.getconn()
    second = pool.getconn()
    if not one_dies:  # nothing suspect, idle far below ping_after: no ping at all
        assert (first, second) == (newest, older)
        assert last_query(admin_conn, older) == "SELECT 'marker-older'"
        assert last_query(admin_conn, oldest) == "SELECT 'marker-oldest'"
        return
    # The dead newest is dropped by the socket probe; the two opened before it are suspects
    # and get pinged although they were idle for far less than pool_ping_after.
    assert (first, second) == (older, oldest)
    assert newest.closed and pool.get_stats()["connections_lost"] == 1
    assert last_query(admin_conn, older) == "SELECT 1"
    assert last_query(admin_conn, oldest) == "SELECT 1"
    for conn in (first, second):
        pool.putconn(conn)


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the pool's cut may have ended it
        os.kill(pid, signal.SIGCONT)


def test_check_timeout_bounds_a_ping_to_a_hung_backend(
    own_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend that stops answering (SIGSTOP: the process is alive, the socket open, so
    the socket probe sees nothing) is cut off after ``pool_check_timeout``; every line
    logged about it, the driver's own included, names the pool."""
    check_timeout = 0.4
    pool = pgpool_compat.ThreadedConnectionPool(
        1, 2, own_server.dsn, pool_check="ping", pool_ping_after=0,
        pool_check_timeout=check_timeout, pool_name="ledger",
    )
    try:
        hung = pool.getconn()
        pool.putconn(hung)
        pid = pid_of(hung)
        _stop(pid)
        try:
            started = time.monotonic()
            with caplog.at_level(logging.DEBUG, logger="pgpool_compat"):
                conn = pool.getconn()
            took = time.monotonic() - started
        finally:
            _resume(pid)
        lines = [
            r.getMessage() for r in caplog.records
            if r.name.startswith("pgpool_compat") and not r.getMessage().startswith("watchdog:")
        ]  # fmt: skip  (the process-wide watchdog's own lines are about no one pool)
        assert any("ping got no answer" in line for line in lines), lines
        assert all(line.startswith("ledger: ") for line in lines), lines
        assert conn is not hung and hung.closed
        assert check_timeout - 0.05 <= took < check_timeout + 1.0
        assert scalar(conn, "SELECT 1") == 1
        assert pool.get_stats()["connections_lost"] == 1
        pool.putconn(conn)
    finally:
        pool.closeall()


# -- pool_check=callable ----------------------------------------------------------------------


def test_callable_check_false_discards_and_tries_the_next(
    pg_dsn: str, pools: List[Any]
) -> None:
    checked: List[Any] = []
    bad: List[Any] = []

    def check(conn: Any) -> bool:
        checked.append(conn)
        return conn not in bad

    pool = threaded(pools, 3, 3, pg_dsn, pool_check=check)
    a, b, c = [pool.getconn() for _ in range(3)]
    for conn in (a, b, c):
        pool.putconn(conn)
    checked.clear()
    bad.extend([c, b])
    started = time.monotonic()
    got = pool.getconn()
    assert time.monotonic() - started < 0.5  # no backoff between candidates
    assert got is a
    assert checked == [c, b, a]
    assert b.closed and c.closed and not a.closed
    stats = pool.get_stats()
    assert stats["connections_lost"] == 2 and stats["pool_size"] == 1
    pool.putconn(got)
    checked.clear()
    assert pool.getconn() is a and checked == [a]  # run on every checkout


def test_callable_check_that_raises_counts_as_failed(
    pg_dsn: str, pools: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    def check(conn: Any) -> bool:
        raise RuntimeError("check blew up")

    pool = threaded(pools, 1, 1, pg_dsn, pool_check=check)
    idle = pool._pool[0]
    with caplog.at_level(logging.INFO, logger="pgpool_compat"):
        conn = pool.getconn()  # the error does not reach the caller
    assert conn is not idle and idle.closed
    assert scalar(conn, "SELECT 1") == 1
    assert pool.get_stats()["connections_lost"] == 1
    assert any("RuntimeError" in record.getMessage() for record in caplog.records)
    pool.putconn(conn)


# -- pool_reset -------------------------------------------------------------------------------


@pytest.fixture
def role(admin_conn: Any) -> Iterator[str]:
    name = f"opt_role_{uuid.uuid4().hex[:8]}"
    with admin_conn.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {name}")
    yield name
    with admin_conn.cursor() as cursor:
        cursor.execute(f"DROP ROLE IF EXISTS {name}")


def session_state(admin_conn: Any, conn: Any) -> dict[str, Any]:
    """What one borrower could leave behind for the next, read on the connection itself."""
    state = {
        "autocommit": conn.autocommit,
        "readonly": conn.readonly,
        "isolation_level": conn.isolation_level,
        "deferrable": conn.deferrable,
        "search_path": scalar(conn, "SHOW search_path"),
        "role": scalar(conn, "SELECT current_user = session_user"),
        "temp_table": scalar(conn, "SELECT to_regclass('pg_temp.leftover') IS NOT NULL"),
        "prepared": scalar(conn, "SELECT count(*) FROM pg_prepared_statements"),
        "read_only_default": scalar(conn, "SHOW default_transaction_read_only"),
        "isolation_default": scalar(conn, "SHOW default_transaction_isolation"),
        "advisory_locks": scalar(
            admin_conn,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
            (pid_of(conn),),
        ),
    }
    if not conn.autocommit:
        conn.rollback()
    return state


def dirty(conn: Any, role: str) -> None:
    """Change everything a borrower can change about its session."""
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE leftover (x int)")
        cursor.execute("PREPARE leftover_stmt AS SELECT 1")
        cursor.execute("SELECT pg_advisory_lock(4242)")
        cursor.execute("SET search_path TO pg_catalog")
        cursor.execute(f"SET ROLE {role}")
    conn.readonly = True
    conn.isolation_level = ext.ISOLATION_LEVEL_SERIALIZABLE
    conn.deferrable = True


@pytest.mark.own_session
@pytest.mark.parametrize("cls", ["ThreadedConnectionPool", "SimpleConnectionPool"])
@pytest.mark.parametrize("reset", ["discard", "rollback"])
def test_discard_leaves_nothing_for_the_next_borrower(
    reset: str, cls: str, role: str, pg_dsn: str, pools: List[Any], admin_conn: Any
) -> None:
    pool = getattr(pgpool_compat, cls)(1, 1, pg_dsn, pool_reset=reset)
    pools.append(pool)
    conn = pool.getconn()
    clean = session_state(admin_conn, conn)
    dirty(conn, role)
    left = session_state(admin_conn, conn)
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn  # the same session, reset or not
    after = session_state(admin_conn, again)
    if reset == "discard":
        assert after == clean
    else:  # psycopg2.pool's rule: only a transaction is rolled back; the rest leaks
        assert after == left
        assert after["search_path"] == "pg_catalog" and after["temp_table"]
        assert after["advisory_locks"] == 1 and after["prepared"] == 1
    pool.putconn(again)
    assert pool.get_stats()["returns_bad"] == 0


def test_discard_after_a_transaction_left_open(
    pg_dsn: str, pools: List[Any], admin_conn: Any
) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_reset="discard")
    conn = pool.getconn()
    scalar(conn, "SET search_path TO pg_catalog; SELECT 1")
    conn.commit()
    scalar(conn, "SELECT 1")  # a transaction left open
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    assert again.info.transaction_status == ext.TRANSACTION_STATUS_IDLE
    assert again.autocommit is False
    assert scalar(again, "SHOW search_path") == '"$user", public'
    again.rollback()
    pool.putconn(again)


def test_callable_reset_runs_on_every_return_after_the_rollback(
    pg_dsn: str, pools: List[Any]
) -> None:
    seen: List[Any] = []

    def reset(conn: Any) -> None:
        seen.append((conn, conn.info.transaction_status))
        with conn.cursor() as cursor:
            cursor.execute("RESET search_path")
        conn.commit()

    pool = threaded(pools, 1, 1, pg_dsn, pool_reset=reset)
    conn = pool.getconn()
    scalar(conn, "SET search_path TO pg_catalog; SELECT 1")
    conn.commit()
    pool.putconn(conn)  # clean return: the callable still runs
    again = pool.getconn()
    assert scalar(again, "SHOW search_path") == '"$user", public'  # its work is visible
    pool.putconn(again)  # returned inside a transaction: rolled back before the callable
    assert seen == [(conn, ext.TRANSACTION_STATUS_IDLE)] * 2


def test_failing_reset_discards_the_connection_not_the_slot(
    pg_dsn: str, pools: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    def reset(conn: Any) -> None:
        raise RuntimeError("reset blew up")

    pool = threaded(pools, 1, 1, pg_dsn, pool_reset=reset)
    conn = pool.getconn()
    with caplog.at_level(logging.WARNING, logger="pgpool_compat"):
        pool.putconn(conn)  # does not raise
    assert conn.closed
    assert pool.get_stats()["returns_bad"] == 1
    assert any("RuntimeError" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)
    fresh = pool.getconn()  # maxconn=1: a leaked slot would say "exhausted"
    assert fresh is not conn and scalar(fresh, "SELECT 1") == 1
    fresh.rollback()
    pool.putconn(fresh)


# -- pool_configure ---------------------------------------------------------------------------


@pytest.mark.own_session
def test_configure_runs_once_per_new_connection(pg_dsn: str, pools: List[Any]) -> None:
    configured: List[Any] = []

    def configure(conn: Any) -> None:
        configured.append(conn)
        with conn.cursor() as cursor:  # left in a transaction: the pool commits it
            cursor.execute("SET search_path TO pg_catalog, public")

    pool = threaded(pools, 2, 3, pg_dsn, pool_configure=configure)
    assert len(configured) == 2
    for _ in range(5):
        conn = pool.getconn()
        assert conn in configured
        assert conn.info.transaction_status == ext.TRANSACTION_STATUS_IDLE
        assert scalar(conn, "SHOW search_path") == "pg_catalog, public"
        conn.rollback()
        pool.putconn(conn)
    assert len(configured) == 2
    held = [pool.getconn() for _ in range(3)]  # the third is new: configured before use
    assert len(configured) == 3 and set(map(id, held)) == set(map(id, configured))
    for conn in held:
        pool.putconn(conn)


def test_configure_error_reaches_the_caller_and_closes_the_connection(
    pg_dsn: str, pools: List[Any]
) -> None:
    seen: List[Any] = []
    boom = ValueError("configure failed")

    def configure(conn: Any) -> None:
        seen.append(conn)
        if len(seen) == 1:
            raise boom

    pool = threaded(pools, 0, 1, pg_dsn, pool_configure=configure)
    with pytest.raises(ValueError) as info:
        pool.getconn()
    assert info.value is boom
    assert seen[0].closed
    stats = pool.get_stats()
    assert stats["connections_errors"] == 1 and stats["requests_errors"] == 1
    assert stats["pool_size"] == 0
    conn = pool.getconn()  # maxconn=1: the failed connect left its slot free
    assert conn is seen[1] and scalar(conn, "SELECT 1") == 1
    conn.rollback()
    pool.putconn(conn)


def test_configure_error_while_opening_minconn_closes_the_connection(
    pg_dsn: str, admin_conn: Any
) -> None:
    app_name = f"configure-{uuid.uuid4().hex[:8]}"
    seen: List[Any] = []

    def configure(conn: Any) -> None:
        seen.append(conn)
        if len(seen) == 2:
            raise ValueError("configure failed")

    with pytest.raises(ValueError, match="configure failed"):
        pgpool_compat.ThreadedConnectionPool(
            2, 3, pg_dsn, application_name=app_name, pool_configure=configure
        )
    assert len(seen) == 2
    assert [bool(conn.closed) for conn in seen] == [True, True], "the failed one is left open"

    def backends() -> int:
        count: int = scalar(admin_conn, "SELECT count(*) FROM pg_stat_activity "
                            "WHERE application_name = %s", (app_name,))
        return count

    assert wait_until(lambda: backends() == 0, 5)
