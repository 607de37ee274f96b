"""Shared fixtures: every database test runs against a real PostgreSQL, never a mock.

``PGPOOL_TEST_DSN`` set: the tests use that server. Otherwise one throwaway server
(:class:`pgpool_compat.testing.PostgresServer`) is started for the session. If neither is
possible the session stops with one line saying what to install: database tests never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional, Union

import psycopg2
import psycopg2.extensions
import pytest

from pgpool_compat.testing import PostgresNotFound, PostgresServer, external_dsn


class ExternalServer:
    """The server named by ``PGPOOL_TEST_DSN``: only ``dsn`` (it cannot be restarted from
    here, so tests that stop or restart a server use ``own_server``)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        params = psycopg2.extensions.parse_dsn(dsn)
        # Never show the password: describe the server by its address only.
        keys = ("host", "port", "user", "dbname")
        where = " ".join(f"{k}={params[k]}" for k in keys if k in params)
        conn = psycopg2.connect(dsn, connect_timeout=10)
        try:
            self.server_version = _show_version(conn)
        finally:
            conn.close()
        self.description = f"PostgreSQL {self.server_version} (PGPOOL_TEST_DSN) at {where}"


def _show_version(conn: Any) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW server_version")
        return str(cur.fetchone()[0]).split()[0]


SharedServer = Union[PostgresServer, ExternalServer]
_shared: Optional[SharedServer] = None


def _shared_server() -> SharedServer:
    """The session's server, started on first use (the report header uses it first)."""
    global _shared
    if _shared is None:
        dsn = external_dsn()
        try:
            _shared = ExternalServer(dsn) if dsn else PostgresServer(name="pgpool_compat-tests")
        except PostgresNotFound as exc:
            raise pytest.UsageError(str(exc)) from None
        except psycopg2.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise pytest.UsageError(f"cannot connect to PGPOOL_TEST_DSN: {first}") from None
    return _shared


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which PostgreSQL the database tests run against, at the top of every run."""
    return [_shared_server().description]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Repeat the server line at the end, where it survives ``-q`` and long logs."""
    if _shared is not None:
        terminalreporter.write_line(f"tested against {_shared.description}")


def pytest_unconfigure(config: pytest.Config) -> None:
    if isinstance(_shared, PostgresServer):
        _shared.cleanup()


@pytest.fixture(scope="session")
def pg_server() -> SharedServer:
    """The shared server object (a PostgresServer, or an ExternalServer with ``.dsn`` only)."""
    return _shared_server()


@pytest.fixture(scope="session")
def pg_dsn(pg_server: SharedServer) -> str:
    """DSN of the shared test server."""
    return pg_server.dsn


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A fresh throwaway server this test may stop, restart or break; removed afterwards."""
    try:
        server = PostgresServer(name="pgpool_compat-own")
    except PostgresNotFound as exc:
        pytest.fail(f"own_server needs local PostgreSQL binaries: {exc}", pytrace=False)
    with server:
        yield server


@pytest.fixture
def admin_conn(pg_dsn: str) -> Iterator[Any]:
    """An autocommit psycopg2 connection to the shared server, for pg_terminate_backend etc."""
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def pools() -> Iterator[list[Any]]:
    """Pools a test builds; whatever it leaves open is closed afterwards."""
    created: list[Any] = []
    yield created
    for pool in created:
        if not pool.closed:
            pool.closeall()
