"""Failover with a libpq multi-host DSN: two servers, the first one stops, the pool moves to
the second without handing out a dead connection.

Both servers are primaries, so ``target_session_attrs=read-write`` accepts either; it is in the
DSN to show the setting a real primary/standby pair needs. With a real standby, libpq would
skip it while it is read-only and pick it only after promotion: proving that needs a
replication setup (pg_basebackup + promote), which this suite leaves out to stay fast.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import pytest

from pgpool_compat.testing import PostgresServer

from .support import bounded_query, make_pool, slots_in_use

pytestmark = pytest.mark.timeout(60)


def server_port(conn: Any) -> Optional[int]:
    """Which server this connection is on (None when the query fails)."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT inet_server_port()")
            port: int = cur.fetchone()[0]
        conn.rollback()
        return port
    except Exception:
        return None


def test_failover_multi_host(
    impl: str, record: Any, own_server: PostgresServer, spare_server: PostgresServer
) -> None:
    first, second = own_server, spare_server
    dsn = (
        f"host={first.host},{second.host} port={first.port},{second.port} "
        f"user={first.user} dbname={first.dbname} "
        "target_session_attrs=read-write connect_timeout=2"
    )
    size = 2
    pool = make_pool(impl, size, size + 1, dsn)
    try:
        conns = [pool.getconn() for _ in range(size)]
        assert [server_port(conn) for conn in conns] == [first.port] * size
        for conn in conns:
            pool.putconn(conn)
        first.stop("fast")
        stopped_at = time.monotonic()

        handed: List[Any] = []
        first_ok: Optional[float] = None
        for _ in range(size):
            conn = pool.getconn()
            handed.append(conn)
            if bounded_query(conn).ok and first_ok is None:
                first_ok = time.monotonic() - stopped_at
        ports = [server_port(conn) for conn in handed]
        for conn in handed:
            pool.putconn(conn)
        dead = ports.count(None)
        on_second = ports.count(second.port)
        measured: Dict[str, Any] = {
            "dead connections handed out": f"{dead} of {size}",
            "connections on the second server": f"{on_second} of {size}",
            "first successful query after the stop (s)": first_ok,
        }
        record("failover", "Failover: multi-host DSN, first server stopped", measured)
        if impl == "stock":
            assert dead == size
        else:
            assert dead == 0 and on_second == size
            assert first_ok is not None and first_ok < 1.0
        assert slots_in_use(pool) == 0
    finally:
        pool.closeall()
