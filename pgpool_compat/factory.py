"""``ConnectionPool``: the ThreadedConnectionPool engine pooling whatever a factory makes.

Not a second pool: the engine talks to connections only through a ``Driver``, so pooling
sockets, clients or psycopg 3 connections is a driver built from the user's callables.
Fair waiting, lifetimes, idle expiry, checks, reset-on-return and stats are the engine's.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Dict, Generic, Hashable, Iterator, Optional, Tuple, TypeVar

from .errors import PoolError
from .health import Driver
from .lifecycle import (
    MAX_SECONDS,
    callable_setting,
    default_releaser,
    flag_setting,
    prefill_count,
    seconds_setting,
    size_settings,
)
from .options import PoolOptions
from .pool import ThreadedConnectionPool

__all__ = ["ConnectionPool", "FactoryDriver"]

logger = logging.getLogger("pgpool_compat")

ConnT = TypeVar("ConnT")


class FactoryDriver(Driver[ConnT]):
    """Connections from user callables: ``factory()`` opens, ``reset(conn)`` runs on every
    return, ``releaser(conn)`` closes (default: ``conn.close()`` if there is one).

    There is no zero-round-trip probe for an unknown kind of connection, so liveness is the
    pool's ``check`` callable, which the engine runs with its lock released.
    """

    def __init__(
        self,
        factory: Callable[[], ConnT],
        releaser: Optional[Callable[[ConnT], Any]] = None,
        reset: Optional[Callable[[ConnT], Any]] = None,
    ) -> None:
        self._factory = factory
        self._releaser: Callable[[ConnT], Any] = releaser or default_releaser
        self._reset = reset

    def connect(self) -> ConnT:
        return self._factory()

    def return_state(self, conn: ConnT) -> Optional[bool]:
        # True makes the engine call reset() on every return, outside its lock.
        return self._reset is not None

    def reset(self, conn: ConnT, state: Any) -> None:
        if self._reset is not None:
            self._reset(conn)

    def dispose(self, conn: ConnT) -> None:
        try:
            self._releaser(conn)
        except Exception as error:  # closing must never fail the caller
            logger.debug("error releasing a connection: %s", type(error).__name__)


class ConnectionPool(ThreadedConnectionPool, Generic[ConnT]):
    """A thread-safe pool of whatever ``factory()`` returns.

    Opens ``min_size`` connections at once and never holds more than ``max_size``.
    ``acquire()`` waits up to ``timeout`` seconds for a free connection, first come first
    served, then raises ``PoolTimeoutError`` (``None``: wait as long as it takes; ``0``:
    fail at once). ``check(conn) -> bool`` runs before an idle connection is handed out
    (a false result or an exception discards it and the next is tried); ``reset(conn)`` runs
    on return (an exception discards the connection, never the slot); ``releaser(conn)``
    closes one. Returned connections stay open up to ``max_size``; ``max_idle`` closes those
    idle longer, never going below ``min_size``; ``max_lifetime`` retires connections older
    than that, less up to 10% random jitter. ``lifo=False`` reuses the longest-idle first.
    """

    # Generic pools keep what is returned up to max_size (psycopg2.pool's cap of minconn
    # idle would churn connections); max_idle is what shrinks the pool.
    _keep_idle_up_to_maxconn = True

    def __init__(
        self,
        factory: Callable[[], ConnT],
        *,
        min_size: int = 1,
        max_size: int = 5,
        timeout: Optional[float] = 30.0,
        releaser: Optional[Callable[[ConnT], Any]] = None,
        check: Optional[Callable[[ConnT], Any]] = None,
        reset: Optional[Callable[[ConnT], Any]] = None,
        max_idle: Optional[float] = None,
        max_lifetime: Optional[float] = None,
        lifo: bool = True,
    ) -> None:
        # Validated here so errors name our keywords, not the engine's pool_* ones.
        min_size, max_size = size_settings(min_size, max_size)
        wait = seconds_setting("timeout", timeout, allow_zero=True)
        self._factory_driver: FactoryDriver[ConnT] = FactoryDriver(
            callable_setting("factory", factory, required=True),
            releaser=callable_setting("releaser", releaser),
            reset=callable_setting("reset", reset),
        )
        super().__init__(
            min_size,
            max_size,
            pool_timeout=MAX_SECONDS if wait is None else wait,
            pool_check=callable_setting("check", check),
            pool_max_idle=seconds_setting("max_idle", max_idle, allow_zero=False),
            pool_max_lifetime=seconds_setting("max_lifetime", max_lifetime, allow_zero=False),
            pool_lifo=flag_setting("lifo", lifo),
        )

    def _new_driver(
        self, args: Tuple[Any, ...], kwargs: Dict[str, Any], options: PoolOptions
    ) -> Driver[Any]:
        return self._factory_driver

    @property
    def pool_size(self) -> int:
        """Connections the pool holds: idle, borrowed, and being opened or reset (0 once
        closed)."""
        with self._engine_lock:
            return self._size_and_idle()[0]

    @property
    def idle_count(self) -> int:
        """Connections ready to be handed out at once (0 once closed)."""
        with self._engine_lock:
            return self._size_and_idle()[1]

    def acquire(self) -> ConnT:
        """Borrow a connection, waiting up to ``timeout`` for one (``PoolTimeoutError``)."""
        conn: ConnT = self.getconn()
        return conn

    def release(self, conn: ConnT) -> None:
        """Give a borrowed connection back (``reset`` runs, unless it is past its lifetime)."""
        self.putconn(conn)

    @contextmanager
    def connection(self, key: Optional[Hashable] = None) -> Iterator[ConnT]:
        """``with pool.connection() as conn:`` borrows and always gives back.

        Unlike ThreadedConnectionPool's, it neither commits nor rolls back: a generic
        connection may have no transactions. Use ``reset`` for clean-up on return.
        """
        conn: ConnT = self.getconn(key)
        try:
            yield conn
        finally:
            try:
                self.putconn(conn, key)
            except PoolError:
                if not self.closed:
                    raise  # a closed pool already closed the connection: nothing to return

    def prefill(self, n: Optional[int] = None) -> None:
        """Open connections until the pool holds ``n`` (default ``min_size``, at most
        ``max_size``). A connect error is raised; connections already opened stay."""
        self._refill(prefill_count(n, self.minconn))

    def close_idle(self) -> int:
        """Close the idle connections now and return how many; the pool stays open.

        Borrowed connections are untouched and come back with ``release()`` as usual.
        """
        with self._engine_lock:
            if self.closed:
                return 0
            idle = self._pool[:]
            self._pool.clear()
            for conn in idle:
                self._doomed.append(self._forget(conn))
                self._free_slot()
        self._close_doomed()
        return len(idle)

    def close_all(self) -> None:
        """Close every connection, idle or borrowed, and fail the waiters; idempotent."""
        try:
            self.closeall()
        except PoolError:
            if not self.closed:
                raise
