"""``AsyncConnectionPool``: an asyncio pool of whatever an async factory makes, on the engine.

A thin face: it validates its keywords (errors name them), builds one ``Settings`` and an
``AsyncFactoryDriver`` from the user's callables, and forwards to the asyncio runner, which
owns waiting, expiry, checks, reset, upkeep, stats and the cancellation rules. Its keywords
and verbs are ``ConnectionPool``'s, as coroutines, plus ``check_timeout``.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import AsyncIterator, Awaitable, Callable, Generic, Optional, Type, TypeVar, Union

from .driver_async import AsyncFactoryDriver, Hook
from .engine.asyncio import AsyncRunner
from .engine.threaded import DEFAULT
from .errors import PoolClosed
from .factory_face import FactoryFace, factory_parts, prefill_count
from .settings import check_seconds

__all__ = ["AsyncConnectionPool"]

ConnT = TypeVar("ConnT")


class AsyncConnectionPool(FactoryFace, Generic[ConnT]):
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
        settings, driver = factory_parts(AsyncFactoryDriver[ConnT], "async_factory", locals())
        self._runner: AsyncRunner[ConnT] = AsyncRunner(settings, driver, kind=type(self).__name__)

    # -- borrowing -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open ``min_size`` connections (in the running loop, which the pool now serves)."""
        await self._runner.prefill()

    async def acquire(self, timeout: Optional[float] = DEFAULT) -> ConnT:
        """Borrow a connection, waiting up to ``timeout`` for one (``PoolTimeoutError``).

        ``timeout`` (positional or keyword) replaces the pool's for this call, with the
        same meaning: seconds, ``0`` fails at once, ``None`` waits as long as it takes."""
        return await self._runner.acquire(None, timeout)

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
        await self._runner.prefill(prefill_count(n))

    async def check(self) -> int:
        """Run ``check`` on every idle connection now and close the failing ones; return
        how many were closed."""
        return await self._runner.check()

    async def close_all(self, timeout: Optional[float] = None) -> None:
        """Close every connection, idle or borrowed, and fail the waiters; idempotent.

        Connects and resets in progress are cancelled; the wait for them and for async
        releasers lasts ``timeout`` seconds at most (default ``check_timeout``): a reset
        that will not stop is then abandoned and its connection closed. Cancelling
        ``close_all()`` ends the wait at once (the pool is closed already)."""
        if timeout is not None:
            check_seconds("timeout", timeout, allow_zero=True)
        await self._runner.close(timeout=timeout)

    async def __aenter__(self) -> AsyncConnectionPool[ConnT]:
        try:
            await self.start()
        except BaseException:  # nobody holds the pool: close what start() opened, as the
            await self._runner.close()  # sync constructor does
            raise
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self._runner.close()
