"""``AsyncConnectionPool``: an asyncio pool of whatever an async factory makes, on the engine.

A thin face: it validates its keywords (errors name them), builds one ``Settings`` and an
``AsyncFactoryDriver`` from the user's callables, and forwards to the asyncio runner, which
owns waiting, expiry, checks, reset, upkeep, stats and the cancellation rules. Its keywords
and verbs are ``ConnectionPool``'s, as coroutines, plus ``check_timeout``.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import AsyncIterator, Awaitable, Callable, Dict, Generic, Optional, Type, TypeVar, Union

from .driver_async import AsyncFactoryDriver, Hook
from .engine.asyncio import AsyncRunner
from .engine.stats import Figures
from .errors import PoolClosed
from .settings import Settings, check_callable, check_flag, check_seconds, check_size

__all__ = ["AsyncConnectionPool"]

ConnT = TypeVar("ConnT")


class AsyncConnectionPool(Generic[ConnT]):
    """A pool of whatever ``async_factory`` makes (asyncpg connections, clients, sockets).

    ``async_factory()`` returns a connection or an awaitable of one; ``configure(conn)`` runs
    once on each new connection; ``check(conn)`` says whether an idle connection may be
    handed out (a falsy result, an exception or no answer within ``check_timeout`` discards
    it and the next is tried); ``reset(conn)`` runs on return (an exception or no answer
    within ``check_timeout`` discards the connection, never the slot); ``releaser(conn)``
    closes one (default: ``conn.close()``, awaited if it is a coroutine). Each hook may be
    sync or async.

    ``timeout`` bounds the wait for a free connection or slot (``None``: no bound; ``0``:
    fail at once). ``max_idle`` closes connections idle longer, never below ``min_size``;
    ``max_lifetime`` retires connections older than that, less up to 10% random jitter.
    ``lifo=False`` reuses the longest-idle first. ``leak_timeout`` warns (with the borrower's
    stack) about connections held longer; ``background=True`` runs a keeper task that
    refills to ``min_size``, trims and reports leaks.

    The pool serves the event loop it is used in: made at module level or in a loop that
    has ended, it works in the next loop that uses it. Two loops using it at once (threads)
    get a ``PoolError``.
    """

    def __init__(
        self,
        async_factory: Callable[[], Union[Awaitable[ConnT], ConnT]],
        *,
        min_size: int = 1,
        max_size: int = 5,
        timeout: Optional[float] = 30.0,
        releaser: Optional[Hook] = None,
        check: Optional[Hook] = None,
        reset: Optional[Hook] = None,
        configure: Optional[Hook] = None,
        max_idle: Optional[float] = None,
        max_lifetime: Optional[float] = None,
        check_timeout: float = 5.0,
        leak_timeout: Optional[float] = None,
        background: bool = False,
        lifo: bool = True,
        name: Optional[str] = None,
    ) -> None:
        check_size("min_size", min_size)
        check_size("max_size", max_size, minimum=1)
        if min_size > max_size:
            raise ValueError(f"max_size ({max_size}) must be at least min_size ({min_size})")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        settings = Settings(
            name=name,
            min_size=min_size,
            max_size=max_size,
            timeout=check_seconds("timeout", timeout, allow_zero=True),
            check=check_callable("check", check),
            check_timeout=check_seconds(  # type: ignore[arg-type]
                "check_timeout", check_timeout, allow_zero=False, allow_none=False
            ),
            max_idle=check_seconds("max_idle", max_idle, allow_zero=False),
            max_lifetime=check_seconds("max_lifetime", max_lifetime, allow_zero=False),
            leak_timeout=check_seconds("leak_timeout", leak_timeout, allow_zero=False),
            background=check_flag("background", background),
            lifo=check_flag("lifo", lifo),
        )
        driver: AsyncFactoryDriver[ConnT] = AsyncFactoryDriver(
            check_callable("async_factory", async_factory, required=True),
            releaser=check_callable("releaser", releaser),
            reset=check_callable("reset", reset),
            configure=check_callable("configure", configure),
        )
        self._runner: AsyncRunner[ConnT] = AsyncRunner(settings, driver, kind=type(self).__name__)

    # -- borrowing -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open ``min_size`` connections (in the running loop, which the pool now serves)."""
        await self._runner.prefill()

    async def acquire(self) -> ConnT:
        """Borrow a connection, waiting up to ``timeout`` for one (``PoolTimeoutError``)."""
        return await self._runner.acquire()

    async def release(self, conn: ConnT) -> None:
        """Give a borrowed connection back; safe to call from a task being cancelled.

        A connection this pool did not lend, or one given back twice, raises ``PoolError``
        and changes nothing; after ``close_all()`` a returned connection is already closed.
        """
        await self._runner.release(conn)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[ConnT]:
        """``async with pool.connection() as conn:`` borrows and always gives back."""
        conn = await self._runner.acquire()
        try:
            yield conn
        finally:
            with contextlib.suppress(PoolClosed):  # close_all() ran meanwhile: closed already
                await self._runner.release(conn)

    # -- the rest --------------------------------------------------------------------------

    async def prefill(self, n: Optional[int] = None) -> None:
        """Open connections concurrently until the pool holds ``n`` (default ``min_size``,
        at most ``max_size``). The first connect error is raised once every connect has
        finished; the connections that did open stay."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"prefill() needs a count of at least 0, got {n!r}")
        await self._runner.prefill(n)

    async def check(self) -> int:
        """Run ``check`` on every idle connection now and close the failing ones; return
        how many were closed."""
        return await self._runner.check()

    async def close_all(self) -> None:
        """Close every connection, idle or borrowed, and fail the waiters; idempotent.
        Bounded by ``check_timeout`` and cancellable: a reset or close that does not finish
        in time is abandoned (its connection closed)."""
        await self._runner.close()

    async def __aenter__(self) -> AsyncConnectionPool[ConnT]:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self._runner.close()

    @property
    def closed(self) -> bool:
        return self._runner.closed

    @property
    def name(self) -> str:
        """``name``, or one made from the pool's id; every log line starts with it."""
        return self._runner.name

    @property
    def pool_size(self) -> int:
        """Connections the pool holds: idle, borrowed, and being opened or reset (0 once
        closed)."""
        return self._runner.size

    @property
    def idle_count(self) -> int:
        """Connections ready to be handed out at once (0 once closed)."""
        return self._runner.idle_count

    def get_stats(self) -> Dict[str, int]:
        """Gauges and counters, with psycopg_pool's key names."""
        return self._runner.stats()

    def pop_stats(self) -> Dict[str, int]:
        """Like ``get_stats()``, then zero the counters."""
        return self._runner.stats(pop=True)

    def figures(self) -> Figures:
        """The gauges metrics export."""
        return self._runner.figures()

    def __repr__(self) -> str:
        # The factory is left out on purpose: it may close over a DSN with a password.
        state = "closed" if self.closed else f"size={self.pool_size} idle={self.idle_count}"
        return f"<{type(self).__name__} {self.name!r} {state}>"

