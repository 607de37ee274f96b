"""The seed documents' usage, run on our faces against the real PostgreSQL.

escudeiro's page has code examples: each runs below exactly as printed there, with only its
import line changed (top-level ``await`` as in the page, compiled with
``PyCF_ALLOW_TOP_LEVEL_AWAIT``). The nextorm and generic-connection-pool pages are API
references without examples; their documented calls run here on real connections instead.
"""

from __future__ import annotations

import ast
import asyncio
import socket
import time
from ipaddress import IPv4Address
from typing import Any, Dict, List

import asyncpg
import psycopg2
import psycopg2.extensions
import pytest
from helpers import sessions_named

from tests.factory.test_aio import asyncpg_kwargs

# escudeiro's examples, in page order (one namespace, as a reader runs them); the only edit
# is the import line: ``from escudeiro.ds.pools import AsyncPool`` became ours.
ESCUDEIRO_IMPORT = "from pgpool_compat.compat.escudeiro import AsyncPool\n"
ESCUDEIRO_EXAMPLES = [
    ESCUDEIRO_IMPORT
    + """
async def factory():
    return await connect_to_db()

pool = AsyncPool(factory, releaser=close_connection, pool_size=5)
conn = await pool.acquire()
# use conn
await pool.release(conn)
""",
    ESCUDEIRO_IMPORT
    + """
async def factory():
    # create a new resource
    return await connect_to_db()

async def releaser(resource):
    # clean up the resource
    await resource.close()

pool = AsyncPool(factory, releaser, pool_size=10)

async def main():
    conn = await pool.acquire()
    try:
        # use conn
        ...
    finally:
        await pool.release(conn)
    await pool.dispose()  # Clean up all resources
""",
    "await pool.prefill()  # Pre-create all resources up to pool_size\n",
    "pool = AsyncPool(factory, releaser, pool_size=5, pool_recycle=3600)\n",
]

APP = "pgpool_compat-seed-examples"


def _sessions(admin_conn: Any, name: str, expected: int) -> int:
    """Sessions named ``name``, polled up to 5 s for ``expected`` (a closed connection's
    server process exits a moment after the client closes it)."""
    deadline = time.monotonic() + 5
    count = sessions_named(admin_conn, name)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = sessions_named(admin_conn, name)
    return count


def _asyncpg_kwargs(dsn: str) -> Dict[str, Any]:
    """asyncpg.connect() keywords for the test server, sessions named ``APP``."""
    return dict(asyncpg_kwargs(dsn), server_settings={"application_name": APP})


async def _run(source: str, namespace: Dict[str, Any]) -> None:
    code = compile(source, "<seed example>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # a coroutine when the example awaits at top level
    if asyncio.iscoroutine(result):
        await result


@pytest.mark.timeout(60)
def test_escudeiro_examples_run_unchanged(pg_dsn: str, admin_conn: Any) -> None:
    kwargs = _asyncpg_kwargs(pg_dsn)
    opened: List[Any] = []

    async def connect_to_db() -> Any:
        conn = await asyncpg.connect(**kwargs)
        opened.append(conn)
        return conn

    async def close_connection(conn: Any) -> None:
        await conn.close()

    async def body() -> Dict[str, Any]:
        namespace: Dict[str, Any] = {
            "connect_to_db": connect_to_db,
            "close_connection": close_connection,
        }
        await _run(ESCUDEIRO_EXAMPLES[0], namespace)
        first_pool = namespace["pool"]
        assert len(opened) == 1
        await _run(ESCUDEIRO_EXAMPLES[1], namespace)
        await namespace["main"]()  # the page's main(): acquire, release, dispose
        assert len(opened) == 2 and opened[1].is_closed()
        await _run(ESCUDEIRO_EXAMPLES[2], namespace)  # prefill(): up to pool_size (10)
        assert len(opened) == 12
        prefilled = namespace["pool"]
        await _run(ESCUDEIRO_EXAMPLES[3], namespace)
        recycled = namespace["pool"]
        conn = await recycled.acquire()
        assert await conn.fetchval("SELECT 1") == 1
        await recycled.release(conn)
        for pool in (first_pool, prefilled, recycled):
            await pool.dispose()
        return namespace

    asyncio.run(body())
    assert all(conn.is_closed() for conn in opened)
    assert _sessions(admin_conn, APP, 0) == 0


@pytest.mark.timeout(60)
def test_escudeiro_module_level_pool_in_asyncio_run(pg_dsn: str) -> None:
    # A pool built at import time (no loop yet) and used inside asyncio.run().
    from pgpool_compat.compat.escudeiro import AsyncPool

    kwargs = _asyncpg_kwargs(pg_dsn)

    async def factory() -> Any:
        return await asyncpg.connect(**kwargs)

    async def releaser(conn: Any) -> None:
        await conn.close()

    pool: AsyncPool[Any] = AsyncPool(factory, releaser, pool_size=2)

    async def main() -> int:
        conn = await pool.acquire()
        try:
            return int(await conn.fetchval("SELECT 41 + 1"))
        finally:
            await pool.release(conn)
            await pool.dispose()

    assert asyncio.run(main()) == 42


@pytest.mark.timeout(60)
def test_nextorm_documented_calls_on_psycopg2(pg_dsn: str, admin_conn: Any) -> None:
    from pgpool_compat.compat.nextorm import ConnectionPool, PoolTimeoutError

    pool = ConnectionPool(
        lambda: psycopg2.connect(pg_dsn, application_name=APP), min_size=1, max_size=2, timeout=0.5
    )
    assert (pool.pool_size, pool.idle_count) == (1, 1)
    first = pool.acquire()
    second = pool.acquire()
    with pytest.raises(PoolTimeoutError):
        pool.acquire()
    with first.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    pool.release(first)
    pool.close_all()  # the idle one is closed; the borrowed one is not affected
    assert first.closed and not second.closed
    assert _sessions(admin_conn, APP, 1) == 1
    pool.release(second)
    pool.close_all()
    assert _sessions(admin_conn, APP, 0) == 0


@pytest.mark.timeout(60)
def test_nextorm_async_documented_calls_on_asyncpg(pg_dsn: str) -> None:
    from pgpool_compat.compat.nextorm import AsyncConnectionPool

    kwargs = _asyncpg_kwargs(pg_dsn)

    async def body() -> None:
        pool = AsyncConnectionPool(factory=lambda: asyncpg.connect(**kwargs), min_size=2)
        await pool.start()
        assert (pool.pool_size, pool.idle_count) == (2, 2)
        conn = await pool.acquire()
        assert await conn.fetchval("SELECT 2") == 2
        await pool.release(conn)
        await pool.close_all()
        assert conn.is_closed() and pool.pool_size == 0

    asyncio.run(body())


@pytest.mark.timeout(60)
def test_generic_connection_pool_tcp_manager_speaks_to_postgresql(pg_dsn: str) -> None:
    from pgpool_compat.compat.generic_connection_pool.contrib.socket import (
        TcpSocketConnectionManager,
    )
    from pgpool_compat.compat.generic_connection_pool.threading import ConnectionPool

    params = psycopg2.extensions.parse_dsn(pg_dsn)
    endpoint = (IPv4Address("127.0.0.1"), int(params.get("port", 5432)))
    pool: ConnectionPool[Any, socket.socket] = ConnectionPool(
        TcpSocketConnectionManager(), min_idle=1, max_size=2, acquire_timeout=5
    )
    try:
        with pool.connection(endpoint) as sock:
            # PostgreSQL's SSLRequest: the server answers one byte, S or N.
            sock.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
            assert sock.recv(1) in (b"S", b"N")
        assert pool.get_endpoint_pool_size(endpoint, acquired=False) == 1
    finally:
        pool.close()
    assert pool.get_size() == 0


@pytest.mark.timeout(60)
def test_generic_connection_pool_psycopg2_manager_per_endpoint(
    pg_dsn: str, admin_conn: Any
) -> None:
    from pgpool_compat.compat.generic_connection_pool.threading import (
        BaseConnectionManager,
        ConnectionPool,
    )

    class Psycopg2Manager(BaseConnectionManager[str, Any]):
        def create(self, endpoint: str, timeout: Any = None) -> Any:
            return psycopg2.connect(pg_dsn, application_name=endpoint)

        def dispose(self, endpoint: str, conn: Any, timeout: Any = None) -> None:
            conn.close()

        def check_aliveness(self, endpoint: str, conn: Any, timeout: Any = None) -> bool:
            return conn.closed == 0

    pool: ConnectionPool[str, Any] = ConnectionPool(
        Psycopg2Manager(), min_idle=1, max_size=2, total_max_size=3, acquire_timeout=0.3
    )
    one, two = f"{APP}-1", f"{APP}-2"
    try:
        a1, a2 = pool.acquire(one), pool.acquire(one)
        with pytest.raises(TimeoutError):
            pool.acquire(one)
        b1 = pool.acquire(two)
        assert (_sessions(admin_conn, one, 2), _sessions(admin_conn, two, 1)) == (2, 1)
        with pytest.raises(TimeoutError):  # total_max_size=3 reached, nothing idle to drop
            pool.acquire(two)
        pool.release(a2, one)
        b2 = pool.acquire(two)  # room made by closing an idle connection of the other endpoint
        assert (_sessions(admin_conn, one, 1), _sessions(admin_conn, two, 2)) == (1, 2)
        for conn, endpoint in ((a1, one), (b1, two), (b2, two)):
            pool.release(conn, endpoint)
    finally:
        pool.close()
    assert _sessions(admin_conn, one, 0) + _sessions(admin_conn, two, 0) == 0


@pytest.mark.timeout(60)
def test_generic_connection_pool_contrib_psycopg2_manager(pg_dsn: str, admin_conn: Any) -> None:
    # The original's own example pool: one endpoint per database, its psycopg2 manager.
    from pgpool_compat.compat.generic_connection_pool.contrib.psycopg2 import (
        DbConnectionManager,
    )
    from pgpool_compat.compat.generic_connection_pool.threading import ConnectionPool

    params = dict(psycopg2.extensions.parse_dsn(pg_dsn), application_name=f"{APP}-contrib")
    pool: ConnectionPool[str, Any] = ConnectionPool(
        DbConnectionManager({"main": params}), min_idle=1, max_size=2, acquire_timeout=5
    )
    try:
        with pool.connection("main") as conn:
            conn.cursor().execute("SELECT 1")  # left open: rolled back on release
        with pool.connection("main") as again:
            assert again is conn
            assert again.status == psycopg2.extensions.STATUS_READY
        assert _sessions(admin_conn, f"{APP}-contrib", 1) == 1
    finally:
        pool.close()
    assert _sessions(admin_conn, f"{APP}-contrib", 0) == 0


@pytest.mark.timeout(60)
def test_generic_connection_pool_contrib_asyncpg_manager(pg_dsn: str, admin_conn: Any) -> None:
    from pgpool_compat.compat.generic_connection_pool.asyncio import ConnectionPool
    from pgpool_compat.compat.generic_connection_pool.contrib.asyncpg import DbConnectionManager

    params = dict(asyncpg_kwargs(pg_dsn), server_settings={"application_name": f"{APP}-apg"})

    async def body() -> None:
        pool: ConnectionPool[str, Any] = ConnectionPool(
            DbConnectionManager({"main": params}), min_idle=1, max_size=2, acquire_timeout=5
        )
        try:
            async with pool.connection("main") as conn:
                await conn.execute("BEGIN")  # left open: rolled back on release
            async with pool.connection("main") as again:
                assert again is conn and not again.is_in_transaction()  # alive: reused
            assert _sessions(admin_conn, f"{APP}-apg", 1) == 1
        finally:
            await pool.close()

    asyncio.run(body())
    assert _sessions(admin_conn, f"{APP}-apg", 0) == 0
