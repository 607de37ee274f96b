"""Backends that the server ends: pg_terminate_backend of idle and borrowed connections, and
``idle_session_timeout`` expiry. A terminated backend must never be handed out, and returning
one must never cost a slot."""

from __future__ import annotations

import select
import threading
from typing import Any, List

import psycopg2
import pytest

from tests.helpers import server_pid, terminate_backends

from .support import bounded_query, make_pool, peer_hung_up, slots_in_use, wait_until

pytestmark = pytest.mark.timeout(60)


def borrow_all(pool: Any, count: int) -> List[Any]:
    return [pool.getconn() for _ in range(count)]


def dead_among(conns: List[Any]) -> int:
    return sum(not bounded_query(conn).ok for conn in conns)


def test_terminate_idle(impl: str, record: Any, pg_dsn: str) -> None:
    """Idle connections whose backends were terminated are never handed out."""
    size = 3
    pool = make_pool(impl, size, size, pg_dsn)
    try:
        conns = borrow_all(pool, size)
        pids = [server_pid(conn) for conn in conns]
        for conn in conns:
            pool.putconn(conn)
        terminate_backends(pg_dsn, pids)
        assert peer_hung_up(conns)

        handed = borrow_all(pool, size)
        dead = dead_among(handed)
        for conn in handed:
            pool.putconn(conn)
        measured = {"dead connections handed out": f"{dead} of {size}"}
        if impl == "pgpool_compat":
            lost = pool.get_stats()["connections_lost"]
            measured["connections_lost (stats)"] = lost
        record("terminate-idle", "pg_terminate_backend of idle connections", measured)

        if impl == "stock":
            assert dead == size, "stock hands out every dead idle connection (LIFO pop)"
        else:
            assert dead == 0
            assert lost >= size
        assert slots_in_use(pool) == 0
    finally:
        pool.closeall()


def test_terminate_borrowed(impl: str, record: Any, pg_dsn: str) -> None:
    """A borrowed connection terminated inside a transaction, returned without the borrower
    noticing (rollback on return fails): the slot must come back, twice in a row."""
    maxconn = 2
    pool = make_pool(impl, 1, maxconn, pg_dsn)
    putconn_errors = 0
    try:
        for _ in range(maxconn):
            conn = pool.getconn()
            assert bounded_query(conn).ok  # now in a transaction
            terminate_backends(pg_dsn, [backend_pid_in_tx(conn)])
            assert peer_hung_up([conn])
            try:
                pool.putconn(conn)
            except psycopg2.Error:
                putconn_errors += 1
        leaked = slots_in_use(pool)
        usable = 0
        handed = []
        for _ in range(maxconn):
            try:
                conn = pool.getconn()
            except psycopg2.pool.PoolError:
                continue
            handed.append(conn)
            usable += bounded_query(conn).ok
        for conn in handed:
            pool.putconn(conn)
        record(
            "terminate-borrowed",
            "pg_terminate_backend of a borrowed connection in a transaction, returned twice",
            {
                "putconn raised": putconn_errors,
                "slots leaked": f"{leaked} of {maxconn}",
                "usable connections afterwards": f"{usable} of {maxconn}",
            },
        )
        if impl == "stock":
            # The stock bug this row exists for: rollback() escapes putconn, the slot is lost.
            assert putconn_errors == maxconn and leaked == maxconn and usable == 0
        else:
            assert putconn_errors == 0 and leaked == 0 and usable == maxconn
    finally:
        pool.closeall()


def backend_pid_in_tx(conn: Any) -> int:
    """The backend pid, read without ending the borrower's open transaction."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid: int = cur.fetchone()[0]
    return pid


def test_terminate_noticed_by_borrower(impl: str, pg_dsn: str) -> None:
    """The borrower's statement fails on the terminated backend; returning it is clean."""
    pool = make_pool(impl, 1, 1, pg_dsn)
    try:
        conn = pool.getconn()
        terminate_backends(pg_dsn, [server_pid(conn)])
        assert peer_hung_up([conn])
        assert bounded_query(conn).status == "error"
        pool.putconn(conn)
        assert slots_in_use(pool) == 0
        again = pool.getconn()
        assert bounded_query(again).ok
        pool.putconn(again)
    finally:
        pool.closeall()


def test_idle_session_timeout(impl: str, record: Any, pg_dsn: str, admin_conn: Any) -> None:
    """Connections the server closed after ``idle_session_timeout`` are never handed out."""
    size = 2
    dsn = f"{pg_dsn} options='-c idle_session_timeout=300'"
    pool = make_pool(impl, size, size, dsn)
    try:
        conns = borrow_all(pool, size)
        pids = [server_pid(conn) for conn in conns]
        for conn in conns:
            pool.putconn(conn)

        def expired() -> bool:
            with admin_conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
                return bool(cur.fetchone()[0] == 0)

        assert wait_until(expired, 10), "idle_session_timeout did not end the sessions"
        assert peer_hung_up(conns)
        handed = borrow_all(pool, size)
        dead = dead_among(handed)
        for conn in handed:
            pool.putconn(conn)
        record(
            "idle-session-timeout",
            "idle_session_timeout expiry of idle connections",
            {"dead connections handed out": f"{dead} of {size}"},
        )
        assert dead == (size if impl == "stock" else 0)
        assert slots_in_use(pool) == 0
    finally:
        pool.closeall()


@pytest.mark.parametrize("impl", ["pgpool_compat"], indirect=True)  # stock cannot wait
def test_terminated_connection_not_handed_to_waiter(impl: str, record: Any, pg_dsn: str) -> None:
    """A connection whose backend was terminated while borrowed, returned while another
    thread waits (``pool_timeout``): the waiter must get a live connection, not the dead one
    handed over directly."""
    title = "pg_terminate_backend of a borrowed connection returned to a waiting thread"
    record("terminate-waiter", title, {"not applicable": "stock cannot wait"}, pool="stock")
    pool = make_pool(impl, 1, 1, pg_dsn, pool_timeout=5)
    try:
        holder = pool.getconn()
        got: List[Any] = []
        waiter = threading.Thread(target=lambda: got.append(pool.getconn()), daemon=True)
        waiter.start()
        assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, 2)
        terminate_backends(pg_dsn, [server_pid(holder)])
        assert peer_hung_up([holder])
        pool.putconn(holder)
        waiter.join(6)
        assert got, "the waiter got nothing"
        outcome = bounded_query(got[0])
        pool.putconn(got[0])
        record("terminate-waiter", title, {"waiter handed a dead connection": not outcome.ok})
        assert outcome.ok, f"dead connection handed to the waiter: {outcome.error}"
        assert slots_in_use(pool) == 0
    finally:
        pool.closeall()


@pytest.mark.parametrize("body_fails", [False, True], ids=["commit-fails", "body-raises"])
def test_terminated_inside_connection_block(pg_dsn: str, body_fails: bool) -> None:
    """``with pool.connection()`` whose backend is terminated inside the block: the commit (or
    rollback) fails, the error reaches the caller, the slot comes back, the pool works on."""
    import pgpool_compat

    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn)
    try:
        expected = ZeroDivisionError if body_fails else psycopg2.OperationalError
        with pytest.raises(expected), pool.connection() as conn:
            assert bounded_query(conn).ok  # in a transaction now
            terminate_backends(pg_dsn, [backend_pid_in_tx(conn)])
            assert peer_hung_up([conn])
            if body_fails:
                raise ZeroDivisionError
        assert slots_in_use(pool) == 0
        assert pool.get_stats()["pool_size"] == 0
        with pool.connection() as conn:
            assert bounded_query(conn).ok
    finally:
        pool.closeall()


def create_temp_tables(conn: Any, count: int) -> None:
    """Give the session ``count`` temp tables: its exit then drops them before it closes the
    socket, which holds the FATAL-sent-but-socket-open window open for a while."""
    autocommit = conn.autocommit
    conn.autocommit = True  # the DO block commits as it goes: no lock table overflow
    with conn.cursor() as cur:
        cur.execute(
            "DO $$ BEGIN FOR i IN 1..%s LOOP"
            " EXECUTE format('CREATE TEMP TABLE t_%%s (id int)', i);"
            " IF i %% 200 = 0 THEN COMMIT; END IF;"
            " END LOOP; END $$",
            (count,),
        )
    conn.autocommit = autocommit


def test_terminated_backend_with_pending_fatal_is_not_handed_out(pg_dsn: str) -> None:
    """PostgreSQL sends its FATAL before the FIN; in between, the connection is still dead."""
    import pgpool_compat

    pool = pgpool_compat.ThreadedConnectionPool(1, 2, pg_dsn)
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    try:
        conn = pool.getconn()
        create_temp_tables(conn, 2000)
        pid = server_pid(conn)
        pool.putconn(conn)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))  # signal only: no wait
        # The FATAL arrives at once; the backend then drops its tables before closing.
        assert select.select([conn], [], [], 5)[0]
        handed = pool.getconn()
        assert bounded_query(handed).ok
        assert handed is not conn and pool.get_stats()["connections_lost"] == 1
        pool.putconn(handed)
    finally:
        admin.close()
        pool.closeall()
