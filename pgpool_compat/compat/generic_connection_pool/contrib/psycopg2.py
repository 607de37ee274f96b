"""PostgreSQL through psycopg2 (``generic_connection_pool.contrib.psycopg2``): one endpoint
per database name, each with its own connect parameters."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import psycopg2
import psycopg2.extensions

from ....dsn import connect as connect_without_secrets
from ..threading import BaseConnectionManager

__all__ = ["Connection", "DbConnectionManager", "DbEndpoint", "DsnParameters"]

DbEndpoint = str
Connection = psycopg2.extensions.connection  # what it pools (untyped: psycopg2 has no stubs)
DsnParameters = Mapping[DbEndpoint, Mapping[str, str]]


class DbConnectionManager(BaseConnectionManager[DbEndpoint, Any]):
    """Connections to each endpoint made with ``psycopg2.connect(**dsn_params[endpoint])``;
    an uncommitted transaction is rolled back when one is acquired and when it is released.
    Connect errors never show the password."""

    def __init__(self, dsn_params: DsnParameters) -> None:
        self._dsn_params = dsn_params

    def create(self, endpoint: DbEndpoint, timeout: Optional[float] = None) -> Any:
        return connect_without_secrets(**self._dsn_params[endpoint])

    def dispose(
        self, endpoint: DbEndpoint, conn: Any, timeout: Optional[float] = None
    ) -> None:
        conn.close()

    def check_aliveness(
        self, endpoint: DbEndpoint, conn: Any, timeout: Optional[float] = None
    ) -> bool:
        """A ``SELECT 1`` round trip; its transaction is ended by ``on_acquire``."""
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except (psycopg2.Error, OSError):
            return False
        return True

    def on_acquire(self, endpoint: DbEndpoint, conn: Any) -> None:
        _rollback_uncommitted(conn)

    def on_release(self, endpoint: DbEndpoint, conn: Any) -> None:
        _rollback_uncommitted(conn)


def _rollback_uncommitted(conn: Any) -> None:
    if conn.status == psycopg2.extensions.STATUS_IN_TRANSACTION:
        conn.rollback()
