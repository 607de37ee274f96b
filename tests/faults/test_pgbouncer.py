"""The pool behind PgBouncer in transaction pooling mode.

A representative set of the drop-in contract and of the options runs through PgBouncer here;
the whole drop-in and option suites can be run through it with
``python -m tests.faults.pgbouncer -- python -m pytest tests/...`` (see tests/faults/pgbouncer.py).

What ``pool_reset="discard"`` does there: every transaction (and every autocommit statement)
may run on a different server connection, so session state (SET, SET ROLE, temp tables,
prepared statements, advisory locks) set by one borrower lands on whichever server connection
PgBouncer picked and may reach *any* client of PgBouncer, not only the next borrower of this
pool. ``DISCARD ALL`` on return runs on whichever server connection PgBouncer assigns to that
statement: with one server connection (below) it clears exactly the state that was set; with
several it usually clears another one. It costs one round trip and is harmless, but it cannot
make session state safe behind transaction pooling: don't use session state there, and prefer
``pool_reset="rollback"`` (the default). PgBouncer's own ``server_reset_query`` only runs in
session mode.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator, List

import psycopg2
import psycopg2.pool
import pytest

from .pgbouncer import PgBouncer, find_pgbouncer
from .support import bounded_query, make_pool, peer_hung_up, slots_in_use

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def table(admin_conn: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A real table (temp tables do not survive transaction pooling) for this test only."""
    name = "pgb_" + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")
    with admin_conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (v int)")
    yield name
    with admin_conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")


def fetch_one(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_dropin_contract_through_pgbouncer(impl: str, pgbouncer: PgBouncer) -> None:
    """LIFO reuse, keys, exhaustion, foreign connections and closeall, through PgBouncer."""
    pool = make_pool(impl, 1, 2, pgbouncer.dsn)
    conn = pool.getconn()
    assert fetch_one(conn, "SELECT 1") == 1
    pool.putconn(conn)
    assert pool.getconn() is conn  # the newest idle one back
    keyed = pool.getconn("admin")
    assert pool.getconn("admin") is keyed
    with pytest.raises(psycopg2.pool.PoolError, match="exhausted"):
        pool.getconn()
    foreign = psycopg2.connect(pgbouncer.dsn)
    try:
        with pytest.raises(psycopg2.pool.PoolError, match="unkeyed"):
            pool.putconn(foreign)
    finally:
        foreign.close()
    pool.putconn(keyed, "admin")
    pool.putconn(conn)
    assert slots_in_use(pool) == 0
    pool.closeall()
    assert conn.closed and keyed.closed
    with pytest.raises(psycopg2.pool.PoolError, match="closed"):
        pool.getconn()


def test_transactions_through_pgbouncer(impl: str, pgbouncer: PgBouncer, table: str) -> None:
    """Commit, rollback and the rollback of a connection returned mid-transaction."""
    pool = make_pool(impl, 1, 2, pgbouncer.dsn)
    try:
        writer = pool.getconn()
        reader = pool.getconn()
        with writer.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        writer.commit()
        with writer.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (2)")
        pool.putconn(writer)  # returned inside a transaction: rolled back
        assert fetch_one(reader, f"SELECT count(*) FROM {table}") == 1
        reader.rollback()
        pool.putconn(reader)
        again = pool.getconn()
        assert again.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        pool.putconn(again)
    finally:
        pool.closeall()


def test_options_through_pgbouncer(pgbouncer: PgBouncer, table: str) -> None:
    """pool_timeout hand-off, pool_check='ping', pool_reset='discard', pool_configure,
    pool_max_lifetime and connection() all work through PgBouncer in transaction mode."""
    import pgpool_compat

    if not hasattr(pgpool_compat, "ThreadedConnectionPool"):
        pytest.skip("pgpool_compat.ThreadedConnectionPool is not there yet")
    configured: List[Any] = []
    pool = pgpool_compat.ThreadedConnectionPool(
        1,
        1,
        pgbouncer.dsn,
        pool_timeout=2,
        pool_check="ping",
        pool_ping_after=0,
        pool_reset="discard",
        pool_configure=configured.append,
        pool_max_lifetime=0.5,
    )
    try:
        holder = pool.getconn()
        threading.Timer(0.2, pool.putconn, args=(holder,)).start()
        started = time.monotonic()
        waiter = pool.getconn()  # waits for the holder's return
        assert 0.1 < time.monotonic() - started < 1.5
        assert bounded_query(waiter).ok
        pool.putconn(waiter)
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        with pytest.raises(ZeroDivisionError), pool.connection() as conn:
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (2)")
            raise ZeroDivisionError
        with pool.connection() as conn:
            assert fetch_one(conn, f"SELECT count(*) FROM {table}") == 1
        time.sleep(0.6)  # past pool_max_lifetime: the next checkout gets a new connection
        with pool.connection() as conn:
            assert bounded_query(conn).ok
        assert len(configured) == 2
        assert slots_in_use(pool) == 0
    finally:
        pool.closeall()


def test_session_state_behind_pgbouncer(impl: str, record: Any, pg_dsn: str) -> None:
    """Documents ``pool_reset`` behind transaction pooling: a borrower's ``SET search_path``
    lands on PgBouncer's server connection and reaches another client of the same PgBouncer,
    unless ``DISCARD ALL`` on return reaches that server connection (one here)."""
    if find_pgbouncer() is None:
        pytest.skip("pgbouncer is not installed")
    reset = "discard" if impl == "pgpool_compat" else "rollback"
    with PgBouncer(pg_dsn, pool_size=1) as bouncer:
        pool = make_pool(impl, 1, 1, bouncer.dsn, pool_reset=reset)
        other = psycopg2.connect(bouncer.dsn)  # another application on the same PgBouncer
        try:
            conn = pool.getconn()
            with conn.cursor() as cur:
                cur.execute("SET search_path TO tenant_a")
            conn.commit()
            pool.putconn(conn)
            seen = fetch_one(other, "SHOW search_path")
            other.rollback()
        finally:
            other.close()
            pool.closeall()
    leaked = seen == "tenant_a"
    record(
        "pgbouncer-session-state",
        "PgBouncer transaction mode, 1 server connection: a borrower's SET search_path "
        "seen by another client",
        {"pool_reset": reset, "SET seen by another client": leaked},
    )
    assert leaked == (reset == "rollback")


def test_pgbouncer_restart(impl: str, record: Any, pg_dsn: str) -> None:
    """PgBouncer itself restarts (killed, started again on the same port): every pooled
    client connection is cut, and none of them may be handed out."""
    if find_pgbouncer() is None:
        pytest.skip("pgbouncer is not installed")
    size = 2
    with PgBouncer(pg_dsn) as bouncer:
        pool = make_pool(impl, size, size, bouncer.dsn)
        try:
            idle = [pool.getconn() for _ in range(size)]
            for conn in idle:
                assert bounded_query(conn).ok
                conn.rollback()
                pool.putconn(conn)
            bouncer.restart()
            assert peer_hung_up(idle)
            handed = [pool.getconn() for _ in range(size)]
            dead = sum(not bounded_query(conn).ok for conn in handed)
            for conn in handed:
                pool.putconn(conn)
            record(
                "pgbouncer-restart",
                "PgBouncer restarted in front of the server, idle pool",
                {"dead connections handed out": f"{dead} of {size}"},
            )
            assert dead == (size if impl == "stock" else 0)
            assert slots_in_use(pool) == 0
        finally:
            pool.closeall()
