"""generic-connection-pool's threading pool (``generic_connection_pool.threading``), on the
engine's threaded runner: one endpoint is one sub-pool."""

from __future__ import annotations

import abc
from contextlib import contextmanager
from time import monotonic
from typing import Generic, Iterator, Optional

from ...engine.threaded import ThreadedRunner
from ...errors import NotBorrowed, PoolClosed, PoolTimeout
from ...settings import Settings
from ._driver import OUTSIDE, ManagerDriver
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
    """How to open, close and check connections of an endpoint (subclass it)."""

    @abc.abstractmethod
    def create(self, endpoint: EndpointT, timeout: Optional[float] = None) -> ConnectionT:
        """Open a new connection to ``endpoint``."""

    @abc.abstractmethod
    def dispose(
        self, endpoint: EndpointT, conn: ConnectionT, timeout: Optional[float] = None
    ) -> None:
        """Close ``conn``."""

    def check_aliveness(
        self, endpoint: EndpointT, conn: ConnectionT, timeout: Optional[float] = None
    ) -> bool:
        """Whether an idle ``conn`` may be handed out (default: yes); ``timeout`` is the time
        left to the ``acquire()`` (``None``: no limit)."""
        return True

    def on_acquire(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Called when ``conn`` is handed out."""

    def on_release(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Called when ``conn`` is given back."""

    def on_connection_dead(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Called instead of ``dispose`` when ``check_aliveness`` said ``conn`` is dead."""


class ConnectionPool(
    EndpointPool[EndpointT, ConnectionT, BaseConnectionManager[EndpointT, ConnectionT]],
    Generic[EndpointT, ConnectionT],
):
    """A thread-safe pool of connections to many endpoints, made by ``connection_manager``.

    ``acquire(endpoint)`` waits up to ``timeout`` (default ``acquire_timeout``; ``None``: as
    long as it takes) and raises the builtin ``TimeoutError``; a closed pool raises
    ``ConnectionPoolClosedError``. Expired and idle connections are closed on release (at most
    ``dispose_batch_size`` at a time, 0: all) or by a background thread
    (``background_collector=True``), which does not call ``check_aliveness``. See
    ``BaseConnectionPool`` for the size settings.
    """

    def _start(self, settings: Settings, dispose_timeout: Optional[float]) -> None:
        driver = ManagerDriver(self._manager, dispose_timeout)
        self._checkout = driver.checkout
        self._runner: ThreadedRunner[ConnectionT] = ThreadedRunner(
            settings, driver, kind="ConnectionPool"
        )

    def get_size(self) -> int:
        return self._runner.size

    def get_endpoint_pool_size(self, endpoint: EndpointT, acquired: Optional[bool] = None) -> int:
        """Connections of ``endpoint``: all (``None``), borrowed (``True``) or idle (``False``)."""
        return endpoint_size(self._runner.key_sizes(endpoint), acquired)

    @contextmanager
    def connection(
        self, endpoint: EndpointT, timeout: Optional[float] = None
    ) -> Iterator[ConnectionT]:
        """``with pool.connection(endpoint) as conn:`` acquires and always releases."""
        conn = self.acquire(endpoint, timeout=timeout)
        try:
            yield conn
        finally:
            self.release(conn, endpoint)

    def acquire(self, endpoint: EndpointT, timeout: Optional[float] = None) -> ConnectionT:
        """Borrow a connection to ``endpoint``; ``on_acquire`` runs on it."""
        # The setting's rules for a call's own: inf waits as long as it takes (the original
        # overflows), a negative one does not wait.
        timeout = self._acquire_timeout if timeout is None else acquire_seconds(timeout)
        checkout = self._checkout  # check_aliveness gets the time left, as in the original
        checkout.deadline = None if timeout is None else monotonic() + timeout
        try:
            conn = self._runner.acquire(endpoint, timeout)
        except PoolTimeout as error:
            raise TimeoutError(*error.args) from None
        except PoolClosed:
            raise ConnectionPoolClosedError("connection pool is closed") from None
        finally:
            checkout.deadline = OUTSIDE
        try:
            self._manager.on_acquire(endpoint, conn)
        except BaseException:
            self._runner.release(conn)
            raise
        return conn

    def release(self, conn: ConnectionT, endpoint: EndpointT) -> None:
        """Give ``conn`` (or a connection equal to it) back to ``endpoint``; ``on_release``
        runs first. After ``close()`` it is closed. One not borrowed from ``endpoint`` raises
        ``RuntimeError`` (``ConnectionPoolNotFound`` if the endpoint holds none)."""
        try:
            self._manager.on_release(endpoint, conn)
        finally:
            booked = borrowed_as(self._runner.core, self._runner._lock, conn, endpoint)
            try:
                self._runner.release(booked)
            except NotBorrowed:  # another thread gave it back meanwhile
                raise RuntimeError(NOT_ACQUIRED) from None

    def close(self, timeout: Optional[float] = None) -> None:
        """Close the idle connections now and refuse new acquires; a borrowed connection is
        closed when it is released. Never blocks (``timeout`` is accepted for compatibility)."""
        self._runner.close(close_borrowed=False)
