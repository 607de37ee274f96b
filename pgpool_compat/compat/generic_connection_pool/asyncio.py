"""generic-connection-pool's asyncio pool (``generic_connection_pool.asyncio``)."""

from __future__ import annotations

import abc
import contextlib
from typing import AsyncIterator, Generic, Optional

from ...engine.asyncio import AsyncRunner
from ...errors import NotBorrowed, PoolClosed, PoolTimeout
from ...settings import Settings
from ._driver import AsyncManagerDriver
from .common import (
    NOT_ACQUIRED,
    ConnectionT,
    EndpointPool,
    EndpointT,
    acquire_seconds,
    borrowed_as,
    endpoint_size,
)
from .exceptions import ConnectionPoolClosedError

__all__ = ["BaseConnectionManager", "ConnectionPool", "ConnectionT", "EndpointT"]


class BaseConnectionManager(Generic[EndpointT, ConnectionT], abc.ABC):
    """How to open, close and check connections of an endpoint, as coroutines (subclass it)."""

    @abc.abstractmethod
    async def create(self, endpoint: EndpointT) -> ConnectionT:
        """Open a new connection to ``endpoint``."""

    @abc.abstractmethod
    async def dispose(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Close ``conn``."""

    async def check_aliveness(self, endpoint: EndpointT, conn: ConnectionT) -> bool:
        """Whether an idle ``conn`` may be handed out (default: yes)."""
        return True

    async def on_acquire(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Called when ``conn`` is handed out."""

    async def on_release(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Called when ``conn`` is given back."""

    async def on_connection_dead(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Called instead of ``dispose`` when ``check_aliveness`` said ``conn`` is dead."""


class ConnectionPool(
    EndpointPool[EndpointT, ConnectionT, BaseConnectionManager[EndpointT, ConnectionT]],
    Generic[EndpointT, ConnectionT],
):
    """An asyncio pool of connections to many endpoints, made by ``connection_manager``.

    The threading pool's rules, as coroutines: ``acquire(endpoint)`` waits up to ``timeout``
    (default ``acquire_timeout``) and raises the builtin ``TimeoutError``; a closed pool raises
    ``ConnectionPoolClosedError``; ``check_aliveness`` runs at every checkout of an idle
    connection. No running loop is needed to build one: the pool serves the loop it is used
    in, and ``background_collector=True`` starts its task there.
    """

    def _start(self, settings: Settings, dispose_timeout: Optional[float]) -> None:
        self._runner: AsyncRunner[ConnectionT] = AsyncRunner(
            settings, AsyncManagerDriver(self._manager, dispose_timeout), kind="ConnectionPool"
        )

    def get_size(self) -> int:
        return self._runner.size

    async def get_endpoint_pool_size(
        self, endpoint: EndpointT, acquired: Optional[bool] = None
    ) -> int:
        """Connections of ``endpoint``: all (``None``), borrowed (``True``) or idle (``False``)."""
        return endpoint_size(self._runner.key_sizes(endpoint), acquired)

    @contextlib.asynccontextmanager
    async def connection(
        self, endpoint: EndpointT, timeout: Optional[float] = None
    ) -> AsyncIterator[ConnectionT]:
        """``async with pool.connection(endpoint) as conn:`` acquires and always releases."""
        conn = await self.acquire(endpoint, timeout=timeout)
        try:
            yield conn
        finally:
            await self.release(conn, endpoint)

    async def acquire(self, endpoint: EndpointT, timeout: Optional[float] = None) -> ConnectionT:
        """Borrow a connection to ``endpoint``; ``on_acquire`` runs on it."""
        # The setting's rules for a call's own (see the threading pool).
        timeout = self._acquire_timeout if timeout is None else acquire_seconds(timeout)
        try:
            conn = await self._runner.acquire(endpoint, timeout)
        except PoolTimeout as error:
            raise TimeoutError(*error.args) from None
        except PoolClosed:
            raise ConnectionPoolClosedError("connection pool is closed") from None
        try:
            await self._manager.on_acquire(endpoint, conn)
        except BaseException:
            await self._runner.release(conn)
            raise
        return conn

    async def release(self, conn: ConnectionT, endpoint: EndpointT) -> None:
        """Give ``conn`` (or a connection equal to it) back to ``endpoint``; ``on_release``
        runs first. After ``close()`` it is closed. One not borrowed from ``endpoint`` raises
        ``RuntimeError`` (``ConnectionPoolNotFound`` if the endpoint holds none)."""
        try:
            await self._manager.on_release(endpoint, conn)
        finally:
            # No await between the lookup and the release: the books cannot change between.
            booked = borrowed_as(self._runner.core, contextlib.nullcontext(), conn, endpoint)
            try:
                await self._runner.release(booked)
            except NotBorrowed:
                raise RuntimeError(NOT_ACQUIRED) from None

    async def close(self, timeout: Optional[float] = None) -> None:
        """Close the idle connections now and refuse new acquires; a borrowed connection is
        closed when it is released. Never waits for them (``timeout`` is accepted for
        compatibility)."""
        await self._runner.close(close_borrowed=False)
