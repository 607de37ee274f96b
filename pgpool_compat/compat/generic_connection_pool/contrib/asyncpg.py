"""PostgreSQL through asyncpg (``generic_connection_pool.contrib.asyncpg``): one endpoint
per database name, each with its own connect parameters. Needs ``asyncpg`` installed."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import asyncpg

from ..asyncio import BaseConnectionManager

__all__ = ["DbConnectionManager", "DbEndpoint", "DsnParameters"]

DbEndpoint = str
DsnParameters = Mapping[DbEndpoint, Mapping[str, str]]


class DbConnectionManager(BaseConnectionManager[DbEndpoint, Any]):
    """Connections to each endpoint made with ``asyncpg.connect(**dsn_params[endpoint])``;
    an open transaction is rolled back when one is acquired and when it is released.

    ``check_aliveness`` says whether the connection is still open. generic-connection-pool
    0.8.1's own returns ``conn.is_closed()``, the opposite, so that every check there fails.
    """

    def __init__(self, dsn_params: DsnParameters) -> None:
        self._dsn_params = dsn_params

    async def create(self, endpoint: DbEndpoint, timeout: Optional[float] = None) -> Any:
        return await asyncpg.connect(**self._dsn_params[endpoint])

    async def dispose(
        self, endpoint: DbEndpoint, conn: Any, timeout: Optional[float] = None
    ) -> None:
        await conn.close(timeout=timeout)

    async def check_aliveness(
        self, endpoint: DbEndpoint, conn: Any, timeout: Optional[float] = None
    ) -> bool:
        return not conn.is_closed()

    async def on_acquire(self, endpoint: DbEndpoint, conn: Any) -> None:
        await _rollback_uncommitted(conn)

    async def on_release(self, endpoint: DbEndpoint, conn: Any) -> None:
        await _rollback_uncommitted(conn)


async def _rollback_uncommitted(conn: Any) -> None:
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
