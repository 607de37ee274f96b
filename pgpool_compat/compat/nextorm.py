"""Stands in for ``nextorm.pool``: change ``from nextorm.pool import ...`` to
``from pgpool_compat.compat.nextorm import ...``.

The names, keyword-only signatures and defaults are nextorm's. The engine underneath adds what
nextorm leaves out: a release of an object the pool did not lend is refused (``PoolError``), a
failed connect never loses its slot, and a negative ``timeout`` is refused at construction.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol

from ..driver import FactoryDriver
from ..driver_async import AsyncFactoryDriver
from ..engine.asyncio import AsyncRunner
from ..engine.threaded import ThreadedRunner
from ..errors import PoolTimeout
from ..settings import Settings, check_callable, check_seconds, check_sizes

__all__ = ["AsyncConnectionPool", "ConnectionPool", "PoolTimeoutError"]


class PoolTimeoutError(PoolTimeout):
    """No connection became free within ``timeout`` seconds.

    nextorm's name; also a ``pgpool_compat.PoolTimeout`` (and so a psycopg2 ``PoolError``).
    """


def _settings(min_size: Any, max_size: Any, timeout: Any, *, lifo: bool) -> Settings:
    """nextorm's keywords as engine settings; errors name ``min_size`` / ``max_size`` /
    ``timeout``."""
    check_sizes("min_size", min_size, "max_size", max_size)
    return Settings(
        min_size=min_size,
        max_size=max_size,
        timeout=check_seconds("timeout", timeout, allow_zero=True),
        check=None,
        lifo=lifo,
    )


class _NextormPool:
    """What both nextorm pools share: their keywords, validated once, and their gauges.
    Each pool starts its own runner in ``_start``."""

    _lifo: ClassVar[bool]
    _runner: _Gauges

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        min_size: int = 1,
        max_size: int = 5,
        timeout: float = 30.0,
    ) -> None:
        settings = _settings(min_size, max_size, timeout, lifo=self._lifo)
        self._start(check_callable("factory", factory, required=True), settings)

    def _start(self, factory: Callable[[], Any], settings: Settings) -> None:
        raise NotImplementedError

    @property
    def pool_size(self) -> int:
        """Connections open: idle, borrowed and being opened."""
        return self._runner.size

    @property
    def idle_count(self) -> int:
        """Connections idle in the pool."""
        return self._runner.idle_count

    def __repr__(self) -> str:
        return f"<nextorm-style {self._runner!r}>"


class _Gauges(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def idle_count(self) -> int: ...


class ConnectionPool(_NextormPool):
    """Thread-safe pool of what ``factory()`` returns, nextorm's way.

    Opens ``min_size`` connections at construction and never more than ``max_size``;
    ``acquire()`` waits up to ``timeout`` seconds (``None``: no bound) for one, then raises
    ``PoolTimeoutError``. Idle connections are handed out longest-idle first, as nextorm's
    queue does. ``close_all()`` closes the idle connections and leaves the pool usable.
    """

    _lifo = False  # nextorm's queue hands out the longest-idle connection first.

    def _start(self, factory: Callable[[], Any], settings: Settings) -> None:
        # Opens min_size now; a connect error closes the runner and is raised.
        self._runner: ThreadedRunner[Any] = ThreadedRunner(
            settings, FactoryDriver(factory), kind="nextorm.ConnectionPool", prefill=True
        )

    def acquire(self) -> Any:
        """Borrow a connection: an idle one, else a new one under ``max_size``, else wait."""
        try:
            return self._runner.acquire()
        except PoolTimeout as error:
            raise PoolTimeoutError(*error.args) from None

    def release(self, conn: Any) -> None:
        """Give a borrowed connection back."""
        self._runner.release(conn)

    def close_all(self) -> None:
        """Close the idle connections (their ``close()``); borrowed ones are not affected."""
        self._runner.close_idle()


class AsyncConnectionPool(_NextormPool):
    """asyncio pool of what ``await factory()`` returns, nextorm's way.

    ``start()`` opens ``min_size`` connections; it is optional: the pool serves the loop it is
    used in. Idle connections are handed out newest first. ``close_all()`` closes the idle
    connections (awaiting their ``close()``) and leaves the pool usable.
    """

    _lifo = True

    def _start(self, factory: Callable[[], Any], settings: Settings) -> None:
        self._runner: AsyncRunner[Any] = AsyncRunner(
            settings, AsyncFactoryDriver(factory), kind="nextorm.AsyncConnectionPool"
        )

    async def start(self) -> None:
        """Open connections until ``min_size`` are held (a second call opens no more)."""
        await self._runner.prefill()

    async def acquire(self) -> Any:
        """Borrow a connection, waiting up to ``timeout`` (``PoolTimeoutError``)."""
        try:
            return await self._runner.acquire()
        except PoolTimeout as error:
            raise PoolTimeoutError(*error.args) from None

    async def release(self, conn: Any) -> None:
        """Give a borrowed connection back."""
        await self._runner.release(conn)

    async def close_all(self) -> None:
        """Close the idle connections; borrowed ones are not affected."""
        await self._runner.close_idle()
